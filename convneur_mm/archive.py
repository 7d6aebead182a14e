"""Where the experiment tools keep finished results beside the repository's docs.

``tools/compare_real.py`` and ``tools/global_context.py`` write each run's result under their
``--work-dir`` and keep a copy under ``--archive`` at the same relative path, so that a table can
be resumed on a machine whose ``work_dirs`` are gone.
"""
import os
import os.path as osp
import shutil
import subprocess

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def archive_path(path, work_dir, archive):
    """The archive's copy of ``path`` (a file under ``work_dir``); None when ``archive`` is empty.

    A relative ``archive`` is relative to the repository, not to the current directory.
    """
    if not archive:
        return None
    root = archive if osp.isabs(archive) else osp.join(REPO, archive)
    return osp.join(root, osp.relpath(path, work_dir))


def find(path, archived):
    """``path`` if it exists (copied to ``archived`` first if the archive lacks it), else
    ``archived`` if that exists, else None."""
    if osp.exists(path):
        if archived and not osp.exists(archived):
            os.makedirs(osp.dirname(archived), exist_ok=True)
            shutil.copyfile(path, archived)
        return path
    return archived if archived and osp.exists(archived) else None


def code_version():
    """The commit a run's code comes from (short hash), with ``+uncommitted`` when the package,
    the tools or the configs differ from it; None outside a git checkout.

    Recorded in every result, so that rows trained on different code are never read as one
    experiment.
    """
    def git(*argv):
        return subprocess.run(['git', *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        commit = git('rev-parse', '--short=12', 'HEAD')
        changed = git('status', '--porcelain', '--', 'convneur_mm', 'tools', 'configs')
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ('+uncommitted' if changed else '')

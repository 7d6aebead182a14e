import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """The nuclei set of tools/prepare_data.py, built once per test session."""
    out = tmp_path_factory.mktemp('data')
    subprocess.run([sys.executable, str(REPO / 'tools' / 'prepare_data.py'), '--out', str(out),
                    '--only', 'nuclei'], check=True)
    return out


@pytest.fixture(scope='session')
def demo_options(data_root):
    """A function giving the --cfg-options that point the nuclei demos at ``data_root``."""
    root = f'{data_root}/nuclei/'

    def options(**extra):
        opts = {f'{loader}.dataset.data_root': root
                for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
        opts['val_evaluator.ann_file'] = opts['test_evaluator.ann_file'] = \
            root + 'annotations/instances_val.json'
        opts.update(extra)
        return [f'{k}={v}' for k, v in opts.items()]
    return options

"""The docs link to each other by heading anchors; a renamed heading must not leave a dead link."""
import functools
import os.path as osp
import re

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = ['README.md', 'docs/benchmarks.md', 'docs/design.md']
LINK = re.compile(r'\]\(([^)\s#]*)(?:#([^)\s]+))?\)')


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


@functools.lru_cache(maxsize=None)  # read each linked document once, not once per link
def anchors(path):
    with open(path, encoding='utf-8') as f:
        return {anchor(line.lstrip('#')) for line in f if line.startswith('#')}


def test_anchor_rule():
    assert anchor(" ConvNeXt's stem in the whole M1 (`--table stem-det`, 2026-11-25)") == \
        'convnexts-stem-in-the-whole-m1---table-stem-det-2026-11-25'


@pytest.mark.parametrize('doc', DOCS)
def test_relative_links_resolve(doc):
    path = osp.join(REPO, doc)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    dead = []
    for target, fragment in LINK.findall(text):
        if re.match(r'[a-z]+:', target):  # http(s), mailto: not checked offline
            continue
        resolved = osp.normpath(osp.join(osp.dirname(path), target)) if target else path
        if not osp.exists(resolved):
            dead.append(f'{target} (no such file)')
        elif fragment and resolved.endswith('.md') and fragment not in anchors(resolved):
            dead.append(f'{target}#{fragment} (no such heading)')
    assert not dead, f'{doc} links to: {dead}'

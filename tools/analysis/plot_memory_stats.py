"""Plot the memory diagnostics that ``convneur_mm.MemoryStatsHook`` logged during a training run.

    python tools/analysis/plot_memory_stats.py WORK_DIR [--out memory_stats.png]

Reads the newest ``WORK_DIR/*/vis_data/scalars.json`` (or a scalars.json given directly) and draws
one panel per statistic (write strength, gate mean and spread, step, momentum, decay, key coherence,
query alignment) with a line per memory, against the training iteration.
"""
import argparse
import glob
import json
import os.path as osp
from collections import defaultdict

STATS = ('write_strength', 'gate_mean', 'gate_std', 'step', 'momentum', 'decay', 'key_coherence',
         'query_alignment')


def read_scalars(path):
    """{stat: {memory: [(iteration, value), ...]}} from a scalars.json file."""
    series = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            for key, value in record.items():
                if key.startswith('memory/'):
                    _, memory, stat = key.split('/')
                    series[stat][memory].append((record.get('iter', record.get('step')), value))
    return series


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('path', help='a work dir, or a scalars.json file')
    parser.add_argument('--out', default=None, help='PNG (default: beside the scalars.json)')
    args = parser.parse_args()
    path = args.path
    if osp.isdir(path):
        found = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
        if not found:
            raise SystemExit(f'no */vis_data/scalars.json under {path}')
        path = found[-1]
    series = read_scalars(path)
    if not series:
        raise SystemExit(f'{path} holds no memory/... scalars: was convneur_mm.MemoryStatsHook in '
                         f'the config\'s custom_hooks?')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    stats = [s for s in STATS if s in series]
    cols = min(4, len(stats))
    rows = -(-len(stats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(stats):]:
        ax.set_visible(False)
    for ax, stat in zip(axes.flat, stats):
        for memory, points in sorted(series[stat].items()):
            ax.plot(*zip(*points), marker='.', label=memory)
        ax.set_title(stat.replace('_', ' '))
        ax.set_xlabel('iteration')
        if stat in ('write_strength', 'key_coherence', 'query_alignment'):
            ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = args.out or osp.join(osp.dirname(path), 'memory_stats.png')
    fig.savefig(out, dpi=80)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()

"""Write strength of every neural memory of trained runs, over seeds and images.

    python tools/analysis/write_strength.py RUN_DIR [RUN_DIR ...] --images DIR [DIR ...] [--size H W]
    python tools/analysis/write_strength.py work_dirs/compare_real/scenes-det-ft/m1_group-all/seed* \\
        --images data/fashion_scenes/images/val --size 512 512 --init

Each RUN_DIR is a training work directory (of tools/train.py or tools/compare_real.py): the one
config (``*.py``) it holds and the checkpoint its ``last_checkpoint`` file names. For every memory
of each run's backbone it prints ``||G - G_no-write|| / ||G||`` (the mean over the first
``--num-images`` images, sorted by name, of each ``--images`` folder; :func:`convneur_mm.analysis.memory_stats`),
then per memory the mean ± 95% CI over the runs and the smallest run. ``--init`` adds the same
for the runs' configs untrained (seed 0). Near 0 a memory carries no image context after
training; docs/benchmarks.md (section 4) reads the values.
"""
import argparse
import glob
import os.path as osp

from mmengine.config import Config

from convneur_mm.analysis import load_image, memory_stats
from convneur_mm.checkpoint import last_checkpoint
from convneur_mm.engine.launch import build_trained_model
from convneur_mm.stats import mean_ci

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


def run_files(run_dir):
    """(config, checkpoint) of a training work directory."""
    configs = sorted(glob.glob(osp.join(run_dir, '*.py')))
    if len(configs) != 1:
        raise SystemExit(f'{run_dir}: expected one config (*.py) in a training work directory, '
                         f'found {len(configs)}')
    try:
        return configs[0], last_checkpoint(run_dir)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def strengths(config, checkpoint, images, size):
    """memory name -> mean write strength over ``images``."""
    cfg = Config.fromfile(config)
    backbone = build_trained_model(cfg, checkpoint).backbone
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor')
    per_image = [memory_stats(backbone, load_image(path, size, preprocessor)[1])
                 for path in images]
    if not per_image[0]:
        raise SystemExit(f'{config}: the backbone ({type(backbone).__name__}) has no neural memory')
    return {name: sum(s[name]['write_strength'] for s in per_image) / len(per_image)
            for name in per_image[0]}


def table(title, rows):
    """Markdown: one row per run, then the mean ± 95% CI and the minimum per memory."""
    names = list(next(iter(rows.values())))
    lines = [f'\n{title}\n', '| run | ' + ' | '.join(names) + ' |',
             '|---|' + '---|' * len(names)]
    for run, values in rows.items():
        lines.append(f'| {run} | ' + ' | '.join(f'{values[n]:.1%}' for n in names) + ' |')
    if len(rows) > 1:
        cells = []
        for n in names:
            mean, half = mean_ci([values[n] for values in rows.values()])
            cells.append(f'{mean:.1%} ± {half:.1%}')
        lines.append(f'| mean ± 95% CI ({len(rows)} runs) | ' + ' | '.join(cells) + ' |')
        lines.append('| smallest | ' + ' | '.join(
            f'{min(values[n] for values in rows.values()):.1%}' for n in names) + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs='+', metavar='RUN_DIR')
    parser.add_argument('--images', required=True, nargs='+', metavar='DIR',
                        help='folders of images')
    parser.add_argument('--num-images', type=int, default=4, help='per folder')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize every image first (default: as it is)')
    parser.add_argument('--init', action='store_true',
                        help='also the untrained models of the runs\' configs')
    args = parser.parse_args()
    if args.num_images < 1:
        parser.error(f'--num-images must be at least 1, got {args.num_images}')
    images = []
    for folder in args.images:
        if not osp.isdir(folder):
            parser.error(f'--images {folder!r} is not a folder')
        found = sorted(p for p in glob.glob(osp.join(folder, '*'))
                       if p.lower().endswith(IMAGE_SUFFIXES))[:args.num_images]
        if not found:
            parser.error(f'--images {folder!r} holds no {"/".join(IMAGE_SUFFIXES)} file')
        images += found

    files = {run: run_files(run) for run in args.runs}
    size = f'{args.size[0]}x{args.size[1]}' if args.size else 'their own size'
    print(f'write strength ||G - G_no-write|| / ||G||, mean over {len(images)} images of '
          f'{", ".join(args.images)} at {size}')
    trained = {}
    for i, (run, (config, checkpoint)) in enumerate(files.items(), 1):
        print(f'[{i}/{len(files)}] {checkpoint}', flush=True)
        trained[run] = strengths(config, checkpoint, images, args.size)
    print(table('After training:', trained))
    if args.init:
        # one row per distinct model: runs of one recipe differ only in seeds and data paths
        models = {}
        for config, _ in files.values():
            model = Config.fromfile(config).model
            model.backbone.pop('init_cfg', None)
            models.setdefault(repr(model.to_dict()), config)
        print(table('Untrained (seed 0):', {c: strengths(c, 'init', images, args.size)
                                            for c in models.values()}))


if __name__ == '__main__':
    main()

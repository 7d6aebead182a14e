"""Evaluate a checkpoint with any convneur-mm config (detection, segmentation or classification).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR]
                         [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

Metrics are the config's test evaluator (COCO box/mask mAP, mIoU, top-1). ``--show-dir`` saves
the predictions drawn on every test image. CHECKPOINT ``init`` evaluates the config's freshly
initialised model (iteration 0), the baseline that shows how much a run has learned.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from convneur_mm.engine.launch import check_datasets, key_value, setup_cpu_distributed

VISUALIZATION_HOOKS = {'mmdet': 'DetVisualizationHook', 'mmseg': 'SegVisualizationHook',
                       'mmpretrain': 'VisualizationHook'}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file, or "init" for the untrained model')
    parser.add_argument('--work-dir', help='where the metrics and logs go')
    parser.add_argument('--show-dir', help='save images with predictions drawn into this folder '
                                           '(relative to the work dir\'s time-stamped folder)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, type=key_value,
                        metavar='KEY=VALUE')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    init_only = args.checkpoint == 'init'
    if not osp.isfile(args.config):
        raise SystemExit(f'config file {args.config!r} does not exist')
    if not init_only and not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} does not exist (or pass "init")')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = None if init_only else args.checkpoint
    # The weights come from the checkpoint: no pretrained backbone file is needed for testing.
    if cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None
    if args.show_dir:
        scope = cfg.get('default_scope', 'mmdet')
        hook = cfg.default_hooks.setdefault('visualization', dict(
            type=VISUALIZATION_HOOKS.get(scope, 'VisualizationHook')))
        if scope == 'mmpretrain':
            hook.update(enable=True, out_dir=args.show_dir)
        else:
            hook.update(draw=True, test_out_dir=args.show_dir)
    check_datasets(cfg, args.config, loaders=('test_dataloader',))
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    if init_only:
        runner.model.init_weights()  # the Runner initialises only on its training path
    metrics = runner.test()
    print({k: round(float(v), 4) for k, v in metrics.items()})


if __name__ == '__main__':
    main()

"""Build Mask R-CNN from configs/maskrcnn_convneur.py with every ConvNeur preset and run it.

    python tools/forward_demo.py [--size 320] [--arch m1 m2 m3 m4]

For each preset: one training forward (the Mask R-CNN losses on a synthetic image with two
annotated objects), one backward, and one inference pass; prints losses, detections and timings.
The weights are random, so the detector finds little; this shows the wiring, not accuracy.
Needs the OpenMMLab stack (bash tools/install.sh).
"""
import argparse
import time
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'maskrcnn_convneur.py'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', default=['m1', 'm2', 'm3', 'm4'])
    parser.add_argument('--size', type=int, default=320, help='square input size')
    args = parser.parse_args()

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from convneur_mm.models import arch_channels
    from convneur_mm.testing import det_batch

    register_all_modules()
    MMLogger.get_instance('mmengine', log_level='WARNING')  # no per-parameter init report
    cfg = Config.fromfile(CONFIG)
    batch = det_batch(args.size)
    print(f'config {CONFIG.name}, input 1x3x{args.size}x{args.size}, {torch.get_num_threads()} threads')
    for arch in args.arch:
        cfg.model.backbone.arch = arch
        cfg.model.neck.in_channels = arch_channels(arch)
        model = MODELS.build(cfg.model)
        model.init_weights()
        model.train()
        t0 = time.perf_counter()
        data = model.data_preprocessor(batch, training=True)
        loss, log_vars = model.parse_losses(model(**data, mode='loss'))
        loss.backward()
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(batch, training=False)
            result = model(**data, mode='predict')[0]
        t2 = time.perf_counter()
        if not torch.isfinite(loss):
            raise SystemExit(f'ConvNeur-{arch.upper()}: non-finite loss {loss.item()}')
        parts = ', '.join(f'{k}={v.item():.3f}' for k, v in log_vars.items() if k != 'loss')
        print(f'ConvNeur-{arch.upper()}: train step {t1 - t0:5.2f} s, loss {loss.item():.3f} '
              f'({parts}); inference {t2 - t1:5.2f} s, {len(result.pred_instances)} detections, '
              f'masks {tuple(result.pred_instances.masks.shape)}', flush=True)


if __name__ == '__main__':
    main()

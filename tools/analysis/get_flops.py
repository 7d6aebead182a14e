"""Parameters and FLOPs of a config's backbone and whole model at a fixed input shape.

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]

Default shape by task, as papers report them: detection 800x1280, segmentation 512x2048,
classification 224x224. FLOPs are counted by mmengine's FlopAnalyzer on one zero image
(one multiply-add = one FLOP). For two-stage detectors the heads' cost depends on the proposals
of that image, so the whole-model number is indicative; the backbone number is exact.
"""
import argparse

import torch.nn as nn
from mmengine.config import Config, DictAction

from convneur_mm.analysis import count_flops, count_params
from convneur_mm.engine.launch import build_task_model, key_value

DEFAULT_SHAPES = {'mmdet': (800, 1280), 'mmseg': (512, 2048), 'mmpretrain': (224, 224)}


class TensorForward(nn.Module):
    """Runs a task model on one image tensor, as its ``mode='tensor'`` path does."""

    def __init__(self, model, scope):
        super().__init__()
        self.model, self.scope = model, scope

    def forward(self, x):
        if self.scope == 'mmdet':
            from mmdet.structures import DetDataSample
            h, w = x.shape[-2:]
            sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                                 pad_shape=(h, w), batch_input_shape=(h, w),
                                                 scale_factor=(1.0, 1.0)))
            return self.model._forward(x, [sample])
        if self.scope == 'mmseg':
            return self.model._forward(x)
        return self.model(x, mode='tensor')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, type=key_value,
                        metavar='KEY=VALUE')
    args = parser.parse_args()

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope', 'mmdet')
    cfg.model.get('backbone', {}).pop('init_cfg', None)  # counting needs no weights
    model = build_task_model(cfg).eval()
    shape = tuple(args.shape or DEFAULT_SHAPES.get(scope, (224, 224)))

    backbone_flops = count_flops(model.backbone, (1, 3, *shape))[0]
    total_flops = count_flops(TensorForward(model, scope), (1, 3, *shape))[0]
    print(f'config: {args.config}\ninput: 1x3x{shape[0]}x{shape[1]}, counter: mmengine '
          f'FlopAnalyzer (1 multiply-add = 1 FLOP)')
    print(f'| part | params (M) | FLOPs (G) |\n|---|---|---|')
    print(f'| backbone ({type(model.backbone).__name__}) | '
          f'{count_params(model.backbone) / 1e6:.2f} | {backbone_flops / 1e9:.2f} |')
    print(f'| whole model ({type(model).__name__}) | {count_params(model) / 1e6:.2f} | '
          f'{total_flops / 1e9:.2f} |')


if __name__ == '__main__':
    main()

"""Pictures of what ConvNeur's neural memory does on one image.

    python tools/analysis/visualize_memory.py CONFIG CHECKPOINT IMAGE --out-dir DIR [--size H W]

CHECKPOINT may be ``init`` (the config's freshly initialised model, as in tools/test.py);
``--reset-to-init PATTERN`` puts matching parameters of a checkpoint back to that model's values.
Writes:

* ``stage<i>.png`` per stage with a memory: the image, the gate sigmoid(G) (mean over channels),
  and the local branch of the stage's first block before and after gating (channel-mean of
  absolute values), each map at the stage's resolution;
* ``surprise.png``: every chunk's inner loss ("surprise") at the state its gradient is taken at,
  per stage, in write order;
* and prints each memory's write strength, gate, step, momentum and decay statistics, key
  coherence and query alignment (:func:`convneur_mm.analysis.memory_stats`).
"""
import argparse
import fnmatch
import os
import os.path as osp

import numpy as np
import torch
from mmengine.config import Config, DictAction

from convneur_mm import NeuralMemory
from convneur_mm.analysis import load_image, memory_stats
from convneur_mm.engine.launch import build_trained_model, key_value
from convneur_mm.models import ConvNeurBlock


def capture(backbone, x):
    """One forward pass; returns per stage (gate, local before gating) and the surprises."""
    memories = {n: m for n, m in backbone.named_modules() if isinstance(m, NeuralMemory)}
    firsts = {n: m for n, m in backbone.named_modules()
              if isinstance(m, ConvNeurBlock) and n.endswith('blocks.0')}
    seen, handles = {}, []
    for name, block in firsts.items():
        stage = name.split('.')[1]
        handles.append(block.pwconv2.register_forward_hook(
            lambda mod, args, out, s=stage: seen.setdefault(s, {}).update(local=out.detach())))
    for name, mem in memories.items():
        stage = name.split('.')[1]
        mem.surprise = []
        # with 'block' placement the first block's memory is the one that gates it
        if name.count('.') == 2 or name.endswith('blocks.0.memory'):
            handles.append(mem.register_forward_hook(
                lambda mod, args, out, s=stage: seen.setdefault(s, {}).update(g=out.detach())))
    try:
        with torch.no_grad():
            backbone(x)
    finally:
        for h in handles:
            h.remove()
    surprise = {}
    for name, mem in memories.items():
        if mem.surprise:
            surprise[name] = torch.cat(mem.surprise, 1).mean(0).numpy()  # mean over heads, images
        mem.surprise = None
    return seen, surprise


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='checkpoint file, or "init" for the untrained model')
    parser.add_argument('image')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='resize the image first (default: as it is)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, type=key_value,
                        metavar='KEY=VALUE')
    parser.add_argument('--reset-to-init', nargs='+', default=[], metavar='PATTERN',
                        help='backbone parameters whose names match these shell patterns (e.g. '
                             '"stages.3.memory.qkv.*") take the values of the untrained model: '
                             'which parameters a trained memory\'s statistics come from')
    args = parser.parse_args()
    if not osp.isfile(args.image):
        raise SystemExit(f'image {args.image!r} does not exist')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    untrained = dict(build_trained_model(cfg, 'init').backbone.named_parameters()
                     ) if args.reset_to_init else {}
    try:
        backbone = build_trained_model(cfg, args.checkpoint).backbone
    except FileNotFoundError as error:
        raise SystemExit(str(error))
    for pattern in args.reset_to_init:
        names = fnmatch.filter(untrained, pattern)
        if not names:
            raise SystemExit(f'--reset-to-init {pattern!r} matches no backbone parameter; they '
                             f'are named like {next(iter(untrained))!r}')
        with torch.no_grad():
            for name in names:
                backbone.get_parameter(name).copy_(untrained[name])
        print(f'reset to the untrained values: {", ".join(names)}')
    if not any(isinstance(m, NeuralMemory) for m in backbone.modules()):
        raise SystemExit(f'{args.config}: the backbone ({type(backbone).__name__}) has no neural '
                         f'memory to show')
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor')
    image, x = load_image(args.image, args.size, preprocessor)
    os.makedirs(args.out_dir, exist_ok=True)

    stats = memory_stats(backbone, x)
    print(f'{"memory":24s} write strength  gate mean ± std   step  momentum  decay  '
          f'key coherence  query alignment')
    for name, s in stats.items():
        print(f'{name:24s} {s["write_strength"]:13.1%}  {s["gate_mean"]:.3f} ± {s["gate_std"]:.3f}'
              f'  {s["step"]:.3f}  {s["momentum"]:8.3f}  {s["decay"]:.3f}  '
              f'{s["key_coherence"]:13.3f}  {s["query_alignment"]:15.3f}')

    seen, surprise = capture(backbone, x)
    for stage, maps in sorted(seen.items()):
        if 'g' not in maps or 'local' not in maps:
            continue
        gate = torch.sigmoid(maps['g'][0])  # (C, h, w)
        local = maps['local'][0].permute(2, 0, 1)  # (C, h, w), before gating
        panels = [('image', image), ('gate σ(G), channel mean', gate.mean(0).numpy()),
                  ('local branch |y|, before gating', local.abs().mean(0).numpy()),
                  ('after gating |σ(G)·y|', (local * gate).abs().mean(0).numpy())]
        fig, axes = plt.subplots(1, 4, figsize=(16, 4.3))
        for ax, (title, data) in zip(axes, panels):
            im = ax.imshow(data, cmap=None if data.ndim == 3 else 'viridis')
            ax.set_title(title, fontsize=10)
            ax.axis('off')
            if data.ndim == 2:
                fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f'stage {int(stage) + 1}: {tuple(gate.shape[1:])} tokens')
        fig.tight_layout()
        path = osp.join(args.out_dir, f'stage{int(stage) + 1}.png')
        fig.savefig(path, dpi=80)
        plt.close(fig)
        print(f'wrote {path}')
    if surprise:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, values in surprise.items():
            ax.plot(np.arange(1, len(values) + 1), values, marker='o', label=name)
        ax.set_xlabel('chunk (write order)')
        ax.set_ylabel('inner loss at the gradient state')
        ax.set_yscale('log')
        ax.set_title('surprise per chunk')
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = osp.join(args.out_dir, 'surprise.png')
        fig.savefig(path, dpi=80)
        plt.close(fig)
        print(f'wrote {path}')


if __name__ == '__main__':
    main()

"""How much of a training step the backbone takes, on the config's own training data.

    python tools/analysis/backbone_share.py CONFIG [--steps 10] [--cfg-options KEY=VALUE ...]

Times whole training steps (``model.train_step``: data preprocessing, forward, losses, backward,
optimizer) and, on the same preprocessed batches, the backbone alone (forward + backward with
random output gradients), then prints the median of each and their ratio.
"""
import argparse
import statistics
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner

from convneur_mm.engine.launch import build_task_model, key_value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, type=key_value,
                        metavar='KEY=VALUE')
    args = parser.parse_args()

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = build_task_model(cfg)
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False)
    loader = iter(Runner.build_dataloader(cfg.train_dataloader, seed=0))

    step_times, backbone_times = [], []
    for i in range(args.warmup + args.steps):
        batch = next(loader)
        t0 = time.perf_counter()
        model.train_step(batch, optim_wrapper)
        t1 = time.perf_counter()
        inputs = model.data_preprocessor(batch, training=True)['inputs']
        t2 = time.perf_counter()
        outs = model.backbone(inputs)
        torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
        t3 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i >= args.warmup:
            step_times.append(t1 - t0)
            backbone_times.append(t3 - t2)
    step, backbone = statistics.median(step_times), statistics.median(backbone_times)
    print(f'{args.config}: input {tuple(inputs.shape)}, {torch.get_num_threads()} threads, '
          f'median of {args.steps} steps')
    print(f'training step {step:.3f} s, backbone forward+backward {backbone:.3f} s '
          f'({backbone / step:.0%} of the step)')


if __name__ == '__main__':
    main()

"""Can the neural memory alone carry one bit of image-level context? A mechanism probe.

    python tools/analysis/memory_mechanism.py                      # the default grid, 3 seeds
    python tools/analysis/memory_mechanism.py --settings "196 1 1" "196 1 None" --seeds 0 1 2

A ``NeuralMemory`` (C = 32, by default C_m = 32: one head) and a 1x1 convolution are trained on 24 x 24 maps of
Gaussian noise tokens; in half of the maps a 2 x 2 patch carries an added fixed random vector (the
marker). Every position is labelled with the map's bit (marker present or not), so the only way to
the answer is through the memory: what is written anywhere must be read everywhere. Each setting
is ``CHUNK MAX_LR CHUNKS_PER_GROUP``; ``--control`` adds the same memory with its write switched
off (every token reads the learned initial memory), which must stay at chance. The table gives,
over seeds, the accuracy (the sign of the mean logit of a map, on 256 fresh maps) after the last
step and the first step at which a 64-map check reached 0.95.
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from convneur_mm.models.neural_memory import NeuralMemory
from convneur_mm.stats import fmt

DEFAULT_SETTINGS = ['196 1 1', '196 1 None', '196 0.03 1', '196 0.001 1', '196 0.001 None',
                    '4096 0.001 1']
C, SIDE = 32, 24


def batch(gen, marker, n, background=0.0):
    x = torch.randn(n, C, SIDE, SIDE, generator=gen)
    if background:
        # that fraction of the positions holds one and the same token, like an empty scene
        flat = torch.rand(n, 1, SIDE, SIDE, generator=gen) < background
        x = torch.where(flat, torch.ones_like(x), x)
    y = (torch.rand(n, generator=gen) < 0.5).float()
    for i in torch.nonzero(y).flatten().tolist():
        r, c = torch.randint(0, SIDE - 1, (2,), generator=gen).tolist()
        x[i, :, r:r + 2, c:c + 2] += marker[:, None, None]
    return x, y


def run(chunk, max_lr, group, seed, steps, read_mode, write=True, memory_type='linear',
        memory_dim=32, background=0.0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    marker = torch.randn(C, generator=gen) * 2
    mem = NeuralMemory(C, memory_dim, head_dim=32, chunk_size=chunk, max_lr=max_lr,
                       chunks_per_group=group, read_mode=read_mode, memory_type=memory_type)
    mem.write = write
    head = nn.Conv2d(C, 1, 1)
    opt = torch.optim.AdamW(list(mem.parameters()) + list(head.parameters()), lr=3e-3)
    reached = None
    for step in range(1, steps + 1):
        x, y = batch(gen, marker, 16, background)
        logits = head(mem(x)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y[:, None, None].expand_as(logits))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if reached is None and step % 10 == 0 and \
                accuracy(mem, head, gen, marker, 64, background) >= 0.95:
            reached = step
    gen = torch.Generator().manual_seed(10_000 + seed)
    return accuracy(mem, head, gen, marker, 256, background), reached


@torch.no_grad()
def accuracy(mem, head, gen, marker, n, background=0.0):
    x, y = batch(gen, marker, n, background)
    said = head(mem(x)).mean((1, 2, 3)) > 0
    return float((said.float() == y).float().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--settings', nargs='+', default=DEFAULT_SETTINGS,
                        metavar='"CHUNK MAX_LR GROUP"')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--read-mode', default='final', choices=('final', 'prev'))
    parser.add_argument('--memory-type', default='linear', choices=('linear', 'mlp'))
    parser.add_argument('--memory-dim', type=int, default=32, help='C_m, a multiple of 32')
    parser.add_argument('--background', type=float, default=0.0,
                        help='fraction of positions holding one identical token (default 0)')
    parser.add_argument('--control', action='store_true',
                        help='also run the first setting with the write switched off')
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for setting in args.settings + (['control'] if args.control else []):
        write = setting != 'control'
        setting = setting if write else args.settings[0]
        try:
            chunk, max_lr, group = setting.split()
            chunk, max_lr = int(chunk), float(max_lr)
            group = None if group == 'None' else int(group)
        except ValueError:
            parser.error(f'a setting is "CHUNK MAX_LR CHUNKS_PER_GROUP", e.g. "196 1 None"; '
                         f'got {setting!r}')
        results = []
        for seed in args.seeds:
            t = time.perf_counter()
            acc, reached = run(chunk, max_lr, group, seed, args.steps, args.read_mode, write,
                               args.memory_type, args.memory_dim, args.background)
            results.append((acc, reached))
            print(f'chunk {chunk}, max_lr {max_lr:g}, chunks_per_group {group}, write {write}, '
                  f'seed {seed}: accuracy {acc:.3f}, reached 0.95 at step {reached} '
                  f'({time.perf_counter() - t:.0f} s)', flush=True)
        rows.append((chunk, max_lr, group if write else f'{group}, no write', results))
    print(f'\n{SIDE * SIDE} tokens a map, read_mode={args.read_mode!r}, '
          f'memory_type={args.memory_type!r}, C_m={args.memory_dim}, background '
          f'{args.background:.0%}, {args.steps} steps of 16 '
          f'maps; mean ± 95% CI over seeds {args.seeds}\n')
    print('| chunk | max_lr | chunks_per_group | chunks | accuracy | step reaching 0.95 |')
    print('|---|---|---|---|---|---|')
    for chunk, max_lr, group, results in rows:
        steps = [r for _, r in results]
        shown = ', '.join('-' if s is None else str(s) for s in steps)
        print(f'| {chunk} | {max_lr:g} | {group} | {-(-SIDE * SIDE // chunk)} | '
              f'{fmt([a for a, _ in results])} | {shown} |')


if __name__ == '__main__':
    main()

"""Global-context tasks: does the neural memory carry image-level context?

    python tools/global_context.py                        # every task, variant and seed
    python tools/global_context.py --tasks marker --variants memory local --seeds 0 1 2
    python tools/global_context.py --list                 # what would run
    python tools/global_context.py --summary              # the tables of finished runs only
    python tools/global_context.py --sensitivity --variants memory "memory center"  # at init

Scenes are S x S canvases (default 384) of real Fashion-MNIST photographs, K items at twice their
size (56 px), drawn on the fly from disjoint pools: training scenes from the 60k training images,
validation scenes from test images 0-4999, test scenes from test images 5000-9999. Pixels are
labelled 0 (background), 1 or 2:

* ``marker``: half the scenes hold a red cross (``--marker`` px, default 12) somewhere. Every
  item pixel is 1 if its scene holds the cross, else 2, so labelling any item needs the whole
  scene: the cross is usually farther from it than a local receptive field reaches. Metric: scene accuracy (the majority of a
  scene's item pixels decides; chance 0.5).
* ``odd``: all items but one share a class. The odd item is 1, the others 2. Metric: odd-item
  accuracy (the item with the largest mean 1-vs-2 margin is taken as the odd one; chance 1/K).

A run trains a backbone and a light head (a 1x1 conv per map, upsampled to stride 4 and summed) with
AdamW, linear warm-up and cosine decay, from scratch. Runs go to
``<work-dir>/<task>/<variant>/seed<k>.json``; a finished run is never repeated, so an interrupted
table continues where it stopped. The summary (mean ± 95% CI over seeds) goes to ``results.md``.
"""
import argparse
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = {'marker': 'scene accuracy', 'odd': 'odd-item accuracy'}
ITEM_SCALE, ITEM_THRESHOLD, MARKER = 2, 25, 12

DENSE = dict(arch='m1', chunk_size=4096, max_lr=1e-3)  # the paper's detection memory settings
VARIANTS = {
    'memory': dict(DENSE),
    'local': dict(DENSE, memory_placement='none'),
    'memory cls-settings': dict(arch='m1'),  # chunk 196, max_lr 1
    'memory group=all': dict(DENSE, chunks_per_group=None),
    'memory read=prev': dict(DENSE, read_mode='prev'),
    'memory fusion=add': dict(DENSE, fusion='add'),
    'memory placement=block': dict(DENSE, memory_placement='block'),
    'memory type=mlp': dict(DENSE, memory_type='mlp'),
    # layer scale 1 instead of 1e-6: the residual branches, and so the gates, act from the start
    'memory ls=1': dict(DENSE, layer_scale_init_value=1.0),
    'local ls=1': dict(DENSE, memory_placement='none', layer_scale_init_value=1.0),
    'memory cls-settings ls=1': dict(arch='m1', layer_scale_init_value=1.0),
    'memory group=all ls=1': dict(DENSE, chunks_per_group=None, layer_scale_init_value=1.0),
    'memory fusion=add ls=1': dict(DENSE, fusion='add', layer_scale_init_value=1.0),
    'memory cls-settings group=all ls=1': dict(arch='m1', chunks_per_group=None,
                                               layer_scale_init_value=1.0),
    'memory center': dict(DENSE, center_keys=True),
    'convnextv2-atto': 'convnextv2-atto',
    'pvtv2-b0': 'pvtv2-b0',
    # positive control of the marker task: the local-only model, whose head is also given the
    # answer's ingredient, max over the image of (red - green)
    'oracle': 'oracle',
}
DEFAULT_VARIANTS = ('memory', 'memory center', 'local', 'convnextv2-atto', 'pvtv2-b0')


# ----------------------------------------------------------------------------- scenes
class Pool:
    """Images and labels that one split's scenes draw from, indexed by class."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.by_class = [np.nonzero(labels == c)[0] for c in range(10)]


def load_pools(cache):
    from prepare_data import load_fashion_mnist  # tools/prepare_data.py, beside this script
    arrays = load_fashion_mnist(Path(cache).expanduser())
    test_images, test_labels = arrays['t10k']
    return dict(train=Pool(*arrays['train']), val=Pool(test_images[:5000], test_labels[:5000]),
                test=Pool(test_images[5000:], test_labels[5000:]))


def _place(rng, size, sides, gap=4, tries=500):
    """Top-left corners of non-overlapping squares of the given sides (fewer if they do not fit)."""
    placed = []
    for side in sides:
        for _ in range(tries):
            y, x = rng.integers(0, size - side + 1, 2)
            if all(y + side + gap <= py or py + ps + gap <= y or x + side + gap <= px
                   or px + ps + gap <= x for py, px, ps in placed):
                placed.append((int(y), int(x), side))
                break
    return placed


def compose(rng, pool, task, size=512, num_items=8, marker_side=MARKER):
    """One scene: (image (S, S, 3) uint8, labels (S, S) uint8, instances (S, S) int16, info)."""
    side = 28 * ITEM_SCALE
    if task == 'odd':  # the last photograph is the odd one
        common, odd_class = rng.choice(10, 2, replace=False)
        index = list(rng.choice(pool.by_class[common], num_items - 1)) + \
            [rng.choice(pool.by_class[odd_class])]
    else:
        index = list(rng.choice(len(pool.images), num_items))
    marker = task == 'marker' and bool(rng.random() < 0.5)
    boxes = _place(rng, size, [marker_side] * marker + [side] * num_items)
    image = np.zeros((size, size, 3), np.uint8)
    labels = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int16)
    if marker:
        y, x, _ = boxes.pop(0)
        m, arm = marker_side, max(4, marker_side // 3)  # arms a third of the side, >= 4 px
        cross = np.zeros((m, m), bool)
        cross[(m - arm) // 2:(m + arm) // 2] = cross[:, (m - arm) // 2:(m + arm) // 2] = True
        image[y:y + m, x:x + m][cross] = (255, 0, 0)
    # where fewer items found a place, the odd photograph still goes to the last one placed
    index = index[:len(boxes) - 1] + index[-1:] if task == 'odd' else index[:len(boxes)]
    odd = len(boxes) - 1 if task == 'odd' else -1
    for j, (y, x, _) in enumerate(boxes):
        patch = np.kron(pool.images[index[j]], np.ones((ITEM_SCALE, ITEM_SCALE), np.uint8))
        mask = patch > ITEM_THRESHOLD
        image[y:y + side, x:x + side][mask] = patch[mask][:, None]
        instances[y:y + side, x:x + side][mask] = j + 1
        label = (1 if marker else 2) if task == 'marker' else (1 if j == odd else 2)
        labels[y:y + side, x:x + side][mask] = label
    return image, labels, instances, dict(marker=marker, odd=odd + 1)


def batch(rng, pool, task, n, size, marker_side=MARKER):
    """n scenes as a normalised (n, 3, S, S) tensor, stride-4 labels and instances, and infos."""
    scenes = [compose(rng, pool, task, size, marker_side=marker_side) for _ in range(n)]
    x = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float()
    x = (x - 64.0) / 96.0
    # labels sampled at the centre of every 4 x 4 cell, where the head predicts
    labels = torch.from_numpy(np.stack([s[1][2::4, 2::4] for s in scenes])).long()
    instances = torch.from_numpy(np.stack([s[2][2::4, 2::4] for s in scenes])).long()
    return x, labels, instances, [s[3] for s in scenes]


# ----------------------------------------------------------------------------- models
class Probe(nn.Module):
    """Backbone + a light dense head: (B, 3, S, S) -> (B, 3, S/4, S/4) logits."""

    def __init__(self, backbone, channels, width=64, num_classes=3):
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.cls(F.gelu(self.hidden(x)))

    def hidden(self, x):
        feats = self.backbone(x)
        size = (-(-x.shape[-2] // 4), -(-x.shape[-1] // 4))
        return sum(F.interpolate(lat(f), size=size, mode='bilinear', align_corners=False)
                   for lat, f in zip(self.lateral, feats))


class OracleProbe(Probe):
    """A probe whose head also gets one global number per image: the largest red-minus-green
    value, which tells a scene with the (red) marker from one without. Not a model: a check that
    the task and the training loop work once the global bit reaches the head."""

    def __init__(self, backbone, channels, width=64, num_classes=3):
        super().__init__(backbone, channels, width, num_classes)
        self.oracle = nn.Conv2d(1, width, 1)

    def forward(self, x):
        y = self.hidden(x)
        bit = (x[:, 0] - x[:, 1]).amax((1, 2)).view(-1, 1, 1, 1).expand(-1, 1, *y.shape[-2:])
        return self.cls(F.gelu(y + self.oracle(bit)))


def build(variant, stages):
    spec = VARIANTS[variant]
    out = tuple(range(stages))
    if spec == 'oracle':
        local = build('local', stages)
        return OracleProbe(local.backbone, local.backbone.out_channels)
    if isinstance(spec, dict):
        from convneur_mm import ConvNeur
        backbone = ConvNeur(out_indices=out, **spec)
        backbone.init_weights()
        channels = backbone.out_channels
    elif spec == 'convnextv2-atto':
        from mmpretrain.models import ConvNeXt
        backbone = ConvNeXt(arch='atto', use_grn=True, layer_scale_init_value=0.,
                            out_indices=out, gap_before_final_norm=False)
        backbone.init_weights()
        channels = [40, 80, 160, 320][:stages]
    else:
        from mmdet.models.backbones import PyramidVisionTransformerV2
        backbone = PyramidVisionTransformerV2(embed_dims=32, num_layers=[2, 2, 2, 2],
                                              out_indices=out)
        backbone.init_weights()
        channels = [32, 64, 160, 256][:stages]
    return Probe(backbone, channels)


# ----------------------------------------------------------------------------- train / eval
@torch.no_grad()
def evaluate(model, pool, task, split_id, args, num_scenes=None):
    model.eval()
    num_scenes = num_scenes or args.eval_scenes
    correct = total = pix_correct = pix_total = 0
    for start in range(0, num_scenes, args.batch):
        n = min(args.batch, num_scenes - start)
        # the same scenes for every run: one generator per scene index
        scenes = [compose(np.random.default_rng([split_id, start + i]), pool, task, args.size,
                          marker_side=args.marker) for i in range(n)]
        x = (torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float()
             - 64.0) / 96.0
        logits = model(x)
        margin = logits[:, 1] - logits[:, 2]
        for (_, labels, instances, info), m, lg in zip(scenes, margin, logits):
            labels = torch.from_numpy(labels[2::4, 2::4]).long()
            instances = torch.from_numpy(instances[2::4, 2::4]).long()
            item = labels > 0
            pix_correct += int((lg.argmax(0)[item] == labels[item]).sum())
            pix_total += int(item.sum())
            if task == 'marker':
                said = bool((m[item] > 0).float().mean() > 0.5) if item.any() else False
                correct += said == info['marker']
            else:
                ids = instances[item]
                means = torch.zeros(int(ids.max()) + 1).index_add_(0, ids, m[item])
                means /= torch.bincount(ids, minlength=means.numel()).clamp_min(1)
                means[0] = -math.inf
                correct += int(means.argmax()) == info['odd']
            total += 1
    model.train()
    return dict(accuracy=correct / total, item_pixel_accuracy=pix_correct / max(pix_total, 1))


def memory_write_strength(model, x):
    from convneur_mm.analysis import write_strength
    model.eval()
    try:
        return write_strength(model.backbone, x)
    finally:
        model.train()


def train_one(task, variant, seed, args):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pools = load_pools(args.cache)
    model = build(variant, args.stages)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and 'initial' not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim > 1 and 'initial' not in n)]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.05),
                             dict(params=other, weight_decay=0.0)], lr=args.lr)
    warmup = max(1, args.iters // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, i / args.iters))))
    probe_x = batch(np.random.default_rng([9, 9]), pools['val'], task, 2, args.size, args.marker)[0]
    strength_init = memory_write_strength(model, probe_x)
    curve, val_curve, t0 = [], [], time.perf_counter()
    running = None
    for it in range(args.iters):
        x, labels, _, _ = batch(rng, pools['train'], task, args.batch, args.size, args.marker)
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (it + 1) % args.log_every == 0 or it + 1 == args.iters:
            curve.append((it + 1, running))
            print(f'[{task} | {variant} | seed {seed}] iter {it + 1}/{args.iters} loss {running:.4f} '
                  f'({(time.perf_counter() - t0) / (it + 1):.2f} s/iter)', flush=True)
        if args.eval_every and (it + 1) % args.eval_every == 0 and it + 1 < args.iters:
            # a smaller validation set than the final one: the learning curve, not the result
            acc = evaluate(model, pools['val'], task, 1, args, num_scenes=64)['accuracy']
            val_curve.append((it + 1, acc))
            print(f'[{task} | {variant} | seed {seed}] iter {it + 1}: accuracy on 64 validation '
                  f'scenes {acc:.3f}', flush=True)
    seconds = time.perf_counter() - t0
    return dict(task=task, variant=variant, seed=seed, iters=args.iters, batch=args.batch,
                size=args.size, stages=args.stages, seconds=seconds, loss_curve=curve,
                val_curve=val_curve,
                val=evaluate(model, pools['val'], task, 1, args),
                test=evaluate(model, pools['test'], task, 2, args),
                write_strength_init=strength_init,
                write_strength_final=memory_write_strength(model, probe_x))


@torch.no_grad()
def cross_sensitivity(variant, args, num_scenes=4):
    """At initialisation: how much each stage's global map G changes at the items' positions
    when the marker is erased from a scene, relative to G there (mean over scenes).

    This is the signal a marker-task gradient starts from: a global branch that barely responds
    to the cross gives gradients that barely separate the two labels.
    """
    from convneur_mm import NeuralMemory
    torch.manual_seed(0)
    model = build(variant, args.stages).eval()
    memories = [m for m in model.backbone.modules() if isinstance(m, NeuralMemory)]
    if not memories:
        return None
    pool = load_pools(args.cache)['val']
    grabbed = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: grabbed.__setitem__(k, o))
             for k, m in enumerate(memories)]
    change = [[] for _ in memories]
    index = 0
    while len(change[0]) < num_scenes:
        image, labels, _, info = compose(np.random.default_rng([3, index]), pool, 'marker',
                                         args.size, marker_side=args.marker)
        index += 1
        if not info['marker']:
            continue
        erased = image.copy()
        erased[(image[..., 0] == 255) & (image[..., 1] == 0)] = 0
        x = (torch.from_numpy(np.stack([image, erased])).permute(0, 3, 1, 2).float() - 64) / 96
        model(x)
        for k, g in grabbed.items():
            stride = args.size // g.shape[-1]
            item = torch.from_numpy(labels[stride // 2::stride, stride // 2::stride] > 0)
            item = item[:g.shape[-2], :g.shape[-1]]
            change[k].append(float((g[0] - g[1])[:, item].norm() / g[1][:, item].norm()))
    for h in hooks:
        h.remove()
    return [float(np.mean(c)) for c in change]


# ----------------------------------------------------------------------------- driver
def result_path(args, task, variant, seed):
    marker = '' if args.marker == MARKER else f'-marker{args.marker}'
    return osp.join(args.work_dir, f'stages{args.stages}-{args.size}{marker}', task,
                    variant.replace(' ', '_').replace('=', '-'), f'seed{seed}.json')


def summarize(args, jobs):
    from convneur_mm.stats import fmt, separated
    lines = [f'Global-context tasks: {args.size}x{args.size} scenes, ConvNeur/peer stages '
             f'1-{args.stages}, {args.iters} iterations of batch {args.batch}; '
             'mean ± 95% CI over seeds (test scenes; validation in brackets).', '']
    for task in dict.fromkeys(j[0] for j in jobs):
        lines += [f'### {task} ({TASKS[task]}, {args.eval_scenes} scenes per split)', '',
                  '| variant | seeds | test | val | write strength after training (per stage) |',
                  '|---|---|---|---|---|']
        results = {}
        for variant in dict.fromkeys(j[1] for j in jobs if j[0] == task):
            rs = [json.load(open(p)) for p in (result_path(args, task, variant, s)
                                                for s in args.seeds) if osp.exists(p)]
            if not rs:
                continue
            results[variant] = rs
            ws = [list(r['write_strength_final'].values()) for r in rs if r['write_strength_final']]
            ws_cell = ' / '.join(f'{100 * float(np.mean(col)):.1f}%' for col in zip(*ws)) if ws else '-'
            lines.append(f'| {variant} | {len(rs)} | {fmt([r["test"]["accuracy"] for r in rs])} | '
                         f'({fmt([r["val"]["accuracy"] for r in rs])}) | {ws_cell} |')
        if 'memory' in results:
            for other, rs in results.items():
                if other == 'memory' or len(rs) < 2 or len(results['memory']) < 2:
                    continue
                side = separated([r['test']['accuracy'] for r in results['memory']],
                                 [r['test']['accuracy'] for r in rs])
                verdict = {'a': 'memory higher', 'b': f'{other} higher', None: 'not separated'}[side]
                lines.append(f'\nmemory vs {other}: {verdict}')
        lines.append('')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tasks', nargs='+', choices=list(TASKS), default=list(TASKS))
    parser.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), metavar='NAME',
                        help=f'any of {list(VARIANTS)}')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--stages', type=int, default=2, choices=(2, 4),
                        help='2: the high-resolution probe (out_indices (0, 1)); 4: full backbone')
    parser.add_argument('--size', type=int, default=384, help='canvas side (default 384)')
    parser.add_argument('--marker', type=int, default=MARKER,
                        help=f'side of the marker task\'s cross in pixels (default {MARKER})')
    parser.add_argument('--iters', type=int, default=800)
    parser.add_argument('--scale', type=float, default=1.0, help='multiplies --iters')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--eval-scenes', type=int, default=256)
    parser.add_argument('--log-every', type=int, default=50)
    parser.add_argument('--eval-every', type=int, default=200,
                        help='iterations between accuracy checks on 64 validation scenes (0: none)')
    parser.add_argument('--jobs', type=int, default=2, help='runs in parallel, one thread each')
    parser.add_argument('--work-dir', default='work_dirs/global_context')
    parser.add_argument('--cache', default=os.environ.get(
        'CONVNEUR_CACHE', str(Path.home() / '.cache' / 'convneur-mm')) + '/downloads')
    parser.add_argument('--list', action='store_true', help='print the runs and exit')
    parser.add_argument('--summary', action='store_true', help='print the tables and exit')
    parser.add_argument('--sensitivity', action='store_true',
                        help='print, per variant at initialisation, how much each memory\'s map '
                             'changes at the items when the marker is erased (marker task), '
                             'and exit')
    parser.add_argument('--single', nargs=3, metavar=('TASK', 'VARIANT', 'SEED'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown variants {unknown}; expected any of {list(VARIANTS)}')
    if args.size < 64 or args.iters < 1 or args.batch < 1 or args.scale <= 0:
        parser.error('--size must be >= 64, --iters and --batch >= 1, --scale > 0')
    if not 4 <= args.marker <= args.size // 4:
        parser.error(f'--marker must be between 4 and a quarter of --size, got {args.marker}')
    args.iters = max(1, round(args.iters * args.scale))

    if args.sensitivity:
        print(f'relative change of G at item positions when the marker is erased, at '
              f'initialisation, {args.size}x{args.size} (mean of 4 validation scenes)')
        for variant in args.variants:
            change = cross_sensitivity(variant, args)
            print(f'{variant:<36} ' + ('no memory' if change is None else
                                       ' / '.join(f'{100 * c:.2f}%' for c in change)), flush=True)
        return

    if args.single:
        task, variant, seed = args.single
        path = result_path(args, task, variant, int(seed))
        result = train_one(task, variant, int(seed), args)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path + '.partial', 'w') as f:
            json.dump(result, f, indent=1)
        os.replace(path + '.partial', path)  # only a complete result carries the final name
        return

    jobs = [(t, v, s) for t in args.tasks for v in args.variants for s in args.seeds]
    if args.list:
        for job in jobs:
            print(*job, sep=' | ', end=' | ')
            print('done' if osp.exists(result_path(args, *job)) else 'to run')
        return
    pending = [j for j in jobs if not osp.exists(result_path(args, *j))]
    if not args.summary:
        print(f'{len(jobs)} runs, {len(jobs) - len(pending)} already done, {len(pending)} to run, '
              f'{args.jobs} at a time; logs beside the results under {args.work_dir}', flush=True)
        t0, done = time.perf_counter(), [0]

        def one(job):
            task, variant, seed = job
            path = result_path(args, *job)
            os.makedirs(osp.dirname(path), exist_ok=True)
            cmd = [sys.executable, osp.abspath(__file__), '--single', task, variant, str(seed)]
            for key in ('stages', 'size', 'marker', 'iters', 'batch', 'lr', 'eval_scenes', 'log_every',
                        'eval_every', 'work_dir', 'cache'):
                cmd += [f'--{key.replace("_", "-")}', str(getattr(args, key))]
            env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
            with open(path.replace('.json', '.log'), 'w') as log:
                rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
            done[0] += 1
            if rc or not osp.exists(path):
                print(f'[{done[0]}/{len(pending)}] {task} | {variant} | seed {seed}: FAILED '
                      f'(exit {rc}), see {path.replace(".json", ".log")}', flush=True)
                return
            r = json.load(open(path))
            print(f'[{done[0]}/{len(pending)}, {time.perf_counter() - t0:.0f} s] {task} | {variant} '
                  f'| seed {seed}: test {r["test"]["accuracy"]:.3f}, val {r["val"]["accuracy"]:.3f} '
                  f'({r["seconds"]:.0f} s)', flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, pending))
    table = summarize(args, jobs)
    out = osp.join(osp.dirname(osp.dirname(osp.dirname(result_path(args, *jobs[0])))),
                   'results.md')
    os.makedirs(osp.dirname(out), exist_ok=True)
    Path(out).write_text(table + '\n')
    print(table)


if __name__ == '__main__':
    main()

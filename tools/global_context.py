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
  scene: the cross is usually farther from it than a local receptive field reaches. Metric:
  scene accuracy (the majority of a scene's item pixels decides; chance 0.5). The cross's own
  pixels are background; ``--marker-label ignore`` leaves them out of the training loss (a
  diagnostic: does labelling the cross push the network to stop writing it?).
* ``odd``: all items but one share a class. The odd item is 1, the others 2. Metric: odd-item
  accuracy (the item with the largest mean 1-vs-2 margin is taken as the odd one; chance 1/K).

A run trains a backbone and a light head (a 1x1 conv per map, upsampled to stride 4 and summed) with
AdamW, linear warm-up and cosine decay, from scratch. Runs go to
``<work-dir>/<folder>/<task>/<variant>/seed<k>.json``, the folder named
``stages<n>-<size>[-marker<px>][-ignore][-it<iters>][-b<batch>][-lr<lr>]`` (the bracketed parts
only where they differ from the defaults); a finished run is never repeated, so an interrupted
table continues where it stopped, and a run cut off midway continues from its last checkpoint
(``seed<k>.ckpt.pth``, every 100 iterations, deleted when the run ends) exactly as it would have
gone on. The summary (mean ± 95% CI over seeds) goes to ``results.md``.
Marker runs also record, at initialisation and every ``--log-every`` iterations, how much each
memory's input, read and map respond to the cross (``track_curve``,
``convneur_mm.scenes.marker_response``).
Each result is also kept in ``--archive`` (default ``docs/results/global_context`` in the
repository), where a later run on another machine finds it and does not train it again.
The scenes, probes and training loop are ``convneur_mm.scenes``; this tool picks models and runs.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from convneur_mm import ConvNeur, archive
from convneur_mm.models import ConvNeurBlock, NeuralMemory
from convneur_mm.presets import CONVNEXTV2
from convneur_mm.scenes import (IGNORE, MARKER, TASKS, OracleProbe, Probe, head_signal,
                                marker_response, split_pools, train_probe)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

LEARNED = 0.9  # a run whose test accuracy reaches this has learned its task (chance: 0.5, 1/K)
TRAINING_DEFAULTS = dict(it=800, b=8, lr=2e-3)  # iterations, batch, AdamW's learning rate
# The paper's detection memory settings, with the sequential form (chunks_per_group=1) that every
# archived run was measured with (the default until 2026-12); 'group=all' variants set None.
DENSE = dict(arch='m1', chunk_size=4096, max_lr=1e-3, chunks_per_group=1)
CLS = dict(arch='m1', chunks_per_group=1)  # the preset's classification settings (196, 1)
VARIANTS = {
    'memory': dict(DENSE),
    'local': dict(DENSE, memory_placement='none'),
    'memory cls-settings': dict(CLS),
    'memory group=all': dict(DENSE, chunks_per_group=None),
    'memory read=prev': dict(DENSE, read_mode='prev'),
    'memory fusion=add': dict(DENSE, fusion='add'),
    'memory placement=block': dict(DENSE, memory_placement='block'),
    'memory type=mlp': dict(DENSE, memory_type='mlp'),
    # layer scale 1 instead of 1e-6: the residual branches, and so the gates, act from the start
    'memory ls=1': dict(DENSE, layer_scale_init_value=1.0),
    'local ls=1': dict(DENSE, memory_placement='none', layer_scale_init_value=1.0),
    'memory cls-settings ls=1': dict(CLS, layer_scale_init_value=1.0),
    'memory group=all ls=1': dict(DENSE, chunks_per_group=None, layer_scale_init_value=1.0),
    'memory fusion=add ls=1': dict(DENSE, fusion='add', layer_scale_init_value=1.0),
    'memory cls-settings group=all ls=1': dict(CLS, chunks_per_group=None,
                                               layer_scale_init_value=1.0),
    # the paper's ablations around the shipped memory (one group per stage); C_m 16 and 64 halve
    # and double M1's 32, as the paper's 64 / 256 do M3's 128 (C_m 16 as one head of 16)
    'memory group=all fusion=add': dict(DENSE, chunks_per_group=None, fusion='add'),
    'memory group=all read=prev': dict(DENSE, chunks_per_group=None, read_mode='prev'),
    'memory group=all type=mlp': dict(DENSE, chunks_per_group=None, memory_type='mlp'),
    'memory group=all placement=block': dict(DENSE, chunks_per_group=None,
                                             memory_placement='block'),
    'memory group=all C_m=16': dict(DENSE, chunks_per_group=None, arch=dict(
        ConvNeur.arch_zoo['m1'], memory_dim=16, head_dim=16)),
    'memory group=all C_m=64': dict(DENSE, chunks_per_group=None, arch=dict(
        ConvNeur.arch_zoo['m1'], memory_dim=64)),
    'memory center': dict(DENSE, center_keys=True),
    # the same under the default grouping since 2026-12 (one group per stage)
    'memory center group=all': dict(DENSE, center_keys=True, chunks_per_group=None),
    'memory center global': dict(DENSE, center_keys=True, global_query=True),
    'memory center ls=1': dict(DENSE, center_keys=True, layer_scale_init_value=1.0),
    # the paper's additive ablation: the read enters the residual stream as it is, where the gate
    # can only rescale the item's own local features
    'memory center fusion=add': dict(DENSE, center_keys=True, fusion='add'),
    # the global query's read is the same at every item and enters the residual stream as it
    # is: a scene-level fact reaches every item alike, whatever its query and local features
    'memory center global fusion=add': dict(DENSE, center_keys=True, global_query=True,
                                            fusion='add'),
    # the same memory width in four heads of 8 instead of one of 32: four memories per stage,
    # each with its own keys, so a seed has four chances for one of them to keep the cross
    'memory center heads=4': dict(DENSE, center_keys=True,
                                  arch=dict(ConvNeur.arch_zoo['m1'], head_dim=8)),
    # G = 0 at initialisation (the output projections start at zero): the write cannot disturb
    # the items before the projections have learned what to read
    'memory zero': dict(DENSE, zero_init_memory=True),
    'memory center zero': dict(DENSE, center_keys=True, zero_init_memory=True),
    # a causal check of how seeds lose the bit (docs/benchmarks.md): the keys cannot learn, so
    # the memory cannot learn to map the cross onto the mean key (fix_keys below)
    'memory center fixed-keys': dict(DENSE, center_keys=True, fixed_keys=True),
    # the other route: the layers before the memory keep their random initialisation, so they
    # cannot make the cross's tokens like the rest (fix_body below)
    'memory center frozen-body': dict(DENSE, center_keys=True, frozen_body=True),
    'convnextv2-atto': 'convnextv2-atto',
    'pvtv2-b0': 'pvtv2-b0',
    # a pretrained-style peer with a global branch after each probed stage (convneur_mm.MemoryGated)
    'convnextv2-atto memory-gate': ('convnextv2-atto', dict()),
    'convnextv2-atto memory-gate center global': ('convnextv2-atto',
                                                  dict(center_keys=True, global_query=True)),
    'convnextv2-atto gcnet': ('convnextv2-atto', dict(type='ContextBlock', ratio=1 / 4)),
    # the gates on each probed stage's input (after its downsampling layer), the map ConvNeur's
    # stage memory reads, so that the stage's blocks work on the gated map
    'convnextv2-atto memory-gate before': ('convnextv2-atto', dict(),
                                           dict(after='downsample_layers.{i}')),
    # the same plug-in on ConvNeur-M1's own local network: against 'memory group=all' (the same
    # memory, C_m and places), only the fusion and its initialisation differ: the stream gated
    # once per stage from a zero projection, not every block's branch
    'local memory-gate before': ('local', dict(), dict(after='stages.{i}.downsample')),
    # ConvNeur's own fusion in the plug-in: one map from each stage's input scales every block's
    # update. On M1's local network, against 'memory group=all' only the gate's parametrisation
    # and zero start differ
    'local memory-gate blocks': ('local', dict(), dict(blocks='stages.{i}.blocks')),
    'convnextv2-atto memory-gate blocks': ('convnextv2-atto', dict(), dict(blocks='stages.{i}')),
    # the atto with the layer scale of ConvNeXt-V1 and ConvNeur (1e-6), GRN and stem kept: do the
    # block gates need residual branches that start near zero?
    'convnextv2-atto ls=1e-6': 'convnextv2-atto ls=1e-6',
    'convnextv2-atto ls=1e-6 memory-gate blocks': ('convnextv2-atto ls=1e-6', dict(),
                                                   dict(blocks='stages.{i}')),
    # positive control of the marker task: the local-only model, whose head is also given the
    # answer's ingredient, max over the image of (red - green)
    'oracle': 'oracle',
}
DEFAULT_VARIANTS = ('memory', 'memory center', 'local', 'convnextv2-atto', 'pvtv2-b0')


# ----------------------------------------------------------------------------- models
ATTO = dict(arch='atto', **CONVNEXTV2, gap_before_final_norm=False)
ATTOS = {'convnextv2-atto': ATTO,
         'convnextv2-atto ls=1e-6': dict(ATTO, layer_scale_init_value=1e-6)}
ATTO_CHANNELS = [40, 80, 160, 320]


def build(variant, stages):
    spec = VARIANTS[variant]
    out = tuple(range(stages))
    if spec == 'oracle':
        local = build('local', stages)
        return OracleProbe(local.backbone, local.backbone.out_channels)
    if isinstance(spec, dict):
        spec = dict(spec)
        fixed_keys = spec.pop('fixed_keys', False)
        frozen_body = spec.pop('frozen_body', False)
        backbone = ConvNeur(out_indices=out, **spec)
        backbone.init_weights()
        if fixed_keys:
            fix_keys(backbone)
        if frozen_body:
            fix_body(backbone)
        channels = backbone.out_channels
    elif isinstance(spec, str) and spec in ATTOS:
        from mmpretrain.models import ConvNeXt
        backbone = ConvNeXt(**ATTOS[spec], out_indices=out)
        backbone.init_weights()
        channels = ATTO_CHANNELS[:stages]
    elif isinstance(spec, tuple):  # (host, gate[, {after or blocks: name}]): a gate per stage
        import mmcv.cnn  # noqa: F401  (registers GCNet's ContextBlock)
        import mmpretrain.models  # noqa: F401
        from convneur_mm import MemoryGated
        host, gate, where = (*spec, dict(after='stages.{i}'))[:3]
        if host == 'local':
            host, channels = dict(type='convneur_mm.ConvNeur', **VARIANTS['local']), None
        else:
            host = dict(type='mmpretrain.ConvNeXt', **ATTOS[host])
            channels = ATTO_CHANNELS[:stages]
        backbone = MemoryGated(dict(host, out_indices=out), gate=gate, **{
            arg: [name.format(i=i) for i in range(stages)] for arg, name in where.items()})
        backbone.init_weights()
        channels = channels or backbone.backbone.out_channels
    else:
        from mmdet.models.backbones import PyramidVisionTransformerV2
        backbone = PyramidVisionTransformerV2(embed_dims=32, num_layers=[2, 2, 2, 2],
                                              out_indices=out)
        backbone.init_weights()
        channels = [32, 64, 160, 256][:stages]
    return Probe(backbone, channels)


def fix_keys(model):
    """Keep every memory's keys the functions of its input they are at initialisation: its token
    projection and norm (shared by queries, values and gates) are frozen, and the key rows of its
    qkv projection get no gradient (AdamW's decoupled weight decay still shrinks them by about
    lr x 0.05 per step, a scale the keys' normalisation removes)."""
    for m in model.modules():
        if isinstance(m, NeuralMemory):
            m.reduce.requires_grad_(False)
            m.norm.requires_grad_(False)
            rows = slice(m.qkv.out_features // 3, 2 * m.qkv.out_features // 3)
            for p in (m.qkv.weight, m.qkv.bias):
                p.register_hook(lambda g, rows=rows: g.index_fill(0, torch.arange(
                    rows.start, rows.stop, device=g.device), 0.0))


def fix_body(model):
    """Keep ConvNeur's local network at its random initialisation: the stem, the downsampling
    layers and every block's local branch are frozen; the memories, the layer scales (through
    which the gated branches reach the output) and the output norms learn, and so does the head."""
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, NeuralMemory):
            m.requires_grad_(True)
        elif isinstance(m, ConvNeurBlock) and m.gamma is not None:
            m.gamma.requires_grad_(True)
    for i in model.out_indices:
        getattr(model, f'norm{i}').requires_grad_(True)


# ----------------------------------------------------------------------------- runs
def load_pools(cache):
    from prepare_data import load_fashion_mnist  # tools/prepare_data.py, beside this script
    return split_pools(load_fashion_mnist(Path(cache).expanduser()))


def train_one(task, variant, seed, args, checkpoint=None):
    code = archive.code_version()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pools = load_pools(args.cache)
    model = build(variant, args.stages)
    # the memories' response to the cross through training: where a seed loses the bit
    track = (lambda m: marker_response(m, pools['val'], args.size, args.marker)) \
        if task == 'marker' else None
    result = train_probe(model, pools, task, rng, iters=args.iters, batch=args.batch,
                         size=args.size, lr=args.lr, marker_side=args.marker,
                         marker_label=IGNORE if args.marker_label == 'ignore' else 0,
                         eval_scenes=args.eval_scenes, eval_every=args.eval_every,
                         log_every=args.log_every, track=track,
                         tag=f'{task} | {variant} | seed {seed}', checkpoint=checkpoint)
    return dict(task=task, variant=variant, seed=seed, iters=args.iters, batch=args.batch,
                size=args.size, stages=args.stages, code=code, **result)


def sensitivity(variant, seed, args, pool):
    """At the initialisation of ``seed``'s run: the change of each memory's input, read and G
    when the cross is erased (``marker_response``), and what of it reaches the head
    (``head_signal``)."""
    torch.manual_seed(seed)
    model = build(variant, args.stages)
    return (marker_response(model, pool, args.size, args.marker),
            head_signal(model, pool, args.size, args.marker))


# ----------------------------------------------------------------------------- driver
def result_path(args, task, variant, seed):
    folder = f'stages{args.stages}-{args.size}'
    if args.marker != MARKER:
        folder += f'-marker{args.marker}'
    if args.marker_label == 'ignore':
        folder += '-ignore'
    # A run of another length, batch or learning rate gets a folder of its own, so that it is
    # never taken for (or read beside) a finished run of the defaults.
    for flag, value in (('it', args.iters), ('b', args.batch), ('lr', args.lr)):
        if value != TRAINING_DEFAULTS[flag]:
            folder += f'-{flag}{value:g}'
    return osp.join(args.work_dir, folder, task, variant.replace(' ', '_').replace('=', '-'),
                    f'seed{seed}.json')


def find_result(args, job):
    """The file holding a finished run's result (its work dir's, else the archive's), or None."""
    path = result_path(args, *job)
    return archive.find(path, archive.archive_path(path, args.work_dir, args.archive))


def learned(results):
    """How many runs learned their task: test accuracy at least ``LEARNED``."""
    return sum(r['test']['accuracy'] >= LEARNED for r in results)


def response_cell(results):
    """Mean over seeds of each memory's read response (``marker_response``) at the first and the
    last tracked iteration, or '-' where the runs did not track it."""
    curves = [r['track_curve'] for r in results if r.get('track_curve') and r['track_curve'][0][1]]
    if not curves:
        return '-'
    at = [' / '.join(f'{100 * float(np.mean(col)):.2f}%'
                     for col in zip(*(c[index][1]['read'] for c in curves))) for index in (0, -1)]
    return ' → '.join(at)


def summarize(args, jobs):
    from convneur_mm.stats import fisher_greater, fmt, separated
    lines = [f'Global-context tasks: {args.size}x{args.size} scenes, ConvNeur/peer stages '
             f'1-{args.stages}, {args.iters} iterations of batch {args.batch}; '
             + ('the cross\'s pixels ignored by the training loss; '
                if args.marker_label == 'ignore' else '')
             + 'mean ± 95% CI over seeds (test scenes; validation in brackets).', '']
    for task in dict.fromkeys(j[0] for j in jobs):
        lines += [f'### {task} ({TASKS[task]}, {args.eval_scenes} scenes per split)', '',
                  f'| variant | seeds | test | val | learned (test ≥ {LEARNED}) '
                  '| write strength after training (per stage) '
                  '| the reads\' response to the cross: at init → after training |',
                  '|---|---|---|---|---|---|---|']
        results = {}
        # the reference's row too, so that its comparisons have it beside them
        for variant in dict.fromkeys([j[1] for j in jobs if j[0] == task] + [args.reference]):
            rs = [json.load(open(p)) for p in (find_result(args, (task, variant, s))
                                                for s in args.seeds) if p]
            if not rs:
                continue
            results[variant] = rs
            ws = [list(r['write_strength_final'].values()) for r in rs if r['write_strength_final']]
            ws_cell = ' / '.join(f'{100 * float(np.mean(col)):.1f}%' for col in zip(*ws)) if ws else '-'
            lines.append(f'| {variant} | {len(rs)} | {fmt([r["test"]["accuracy"] for r in rs])} | '
                         f'({fmt([r["val"]["accuracy"] for r in rs])}) | '
                         f'{learned(rs)} of {len(rs)} | {ws_cell} | '
                         f'{response_cell(rs)} |')
        # every variant against the reference (the local-only model unless --reference says
        # otherwise): is it separated beyond the CIs?
        ref = args.reference
        reference = results.get(ref, [])
        for other, rs in results.items():
            if other == ref or len(rs) < 2 or len(reference) < 2:
                continue
            side = separated([r['test']['accuracy'] for r in rs],
                             [r['test']['accuracy'] for r in reference])
            verdict = {'a': f'{other} higher', 'b': f'{ref} higher', None: 'not separated'}[side]
            line = f'\n{other} vs {ref}: {verdict} (95% CIs)'
            if learned(rs) or learned(reference):
                # a seed learns the task or it does not: the counts' exact test says more than
                # a t interval over all-or-nothing accuracies
                p = fisher_greater(learned(rs), len(rs), learned(reference), len(reference))
                line += (f'; learned in {learned(rs)} of {len(rs)} seeds against '
                         f'{learned(reference)} of {len(reference)}, one-sided Fisher exact '
                         f'p = {p:.3f}')
            lines.append(line)
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
    parser.add_argument('--marker-label', choices=('background', 'ignore'), default='background',
                        help='the training label of the cross\'s own pixels: background (the '
                             'default) or ignored by the loss; evaluation scores items only')
    parser.add_argument('--iters', type=int, default=TRAINING_DEFAULTS['it'],
                        help='training iterations (default %(default)s); other values, and other '
                             '--batch and --lr, keep their results in a folder of their own')
    parser.add_argument('--scale', type=float, default=1.0, help='multiplies --iters')
    parser.add_argument('--batch', type=int, default=TRAINING_DEFAULTS['b'])
    parser.add_argument('--lr', type=float, default=TRAINING_DEFAULTS['lr'])
    parser.add_argument('--eval-scenes', type=int, default=256)
    parser.add_argument('--log-every', type=int, default=50)
    parser.add_argument('--eval-every', type=int, default=200,
                        help='iterations between accuracy checks on 64 validation scenes (0: none)')
    parser.add_argument('--jobs', type=int, default=2, help='runs in parallel, one thread each')
    parser.add_argument('--work-dir', default='work_dirs/global_context')
    parser.add_argument('--archive', default=osp.join('docs', 'results', 'global_context'),
                        help='where every finished result is also kept, relative to the '
                             'repository (default: %(default)s); "" turns it off')
    parser.add_argument('--cache', default=os.environ.get(
        'CONVNEUR_CACHE', str(Path.home() / '.cache' / 'convneur-mm')) + '/downloads')
    parser.add_argument('--list', action='store_true', help='print the runs and exit')
    parser.add_argument('--summary', action='store_true', help='print the tables and exit')
    parser.add_argument('--reference', default='local', metavar='NAME',
                        help='the variant every other one is compared with in the tables '
                             '(default: %(default)s)')
    parser.add_argument('--sensitivity', action='store_true',
                        help='print, per variant and seed at initialisation, how much each '
                             'memory\'s map and the head\'s input change at the items when the '
                             'marker is erased (marker task), and exit')
    parser.add_argument('--single', nargs=3, metavar=('TASK', 'VARIANT', 'SEED'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown variants {unknown}; expected any of {list(VARIANTS)}')
    if args.reference not in VARIANTS:
        parser.error(f'--reference {args.reference!r} is not a variant; expected one of '
                     f'{list(VARIANTS)}')
    if args.size < 64 or args.iters < 1 or args.batch < 1 or args.scale <= 0:
        parser.error('--size must be >= 64, --iters and --batch >= 1, --scale > 0')
    if not 4 <= args.marker <= args.size // 4:
        parser.error(f'--marker must be between 4 and a quarter of --size, got {args.marker}')
    args.iters = max(1, round(args.iters * args.scale))

    if args.sensitivity:
        print(f'At the initialisation of each seed\'s run, {args.size}x{args.size}, the cross '
              f'erased from marker scenes: input = change of each memory\'s input against its '
              f'spread, read and map = relative change at the items of its read before the '
              f'output projection and of its G, key and error = mean key norm and first-write '
              f'error at the cross against all tokens, gain = the read\'s memory term against '
              f'its residual (4 validation scenes); head = |mean change| of '
              f'the head input at the items / its spread over the items, the change\'s '
              f'consistency, and the share of items whose 1-vs-2 margin the cross raises '
              f'(6 scenes)')
        pool = load_pools(args.cache)['val']
        for variant in args.variants:
            for seed in args.seeds:
                change, head = sensitivity(variant, seed, args, pool)
                g = 'no memory' if change is None else ' | '.join(
                    [f'{name} ' + ' / '.join(f'{100 * c:.2f}%' for c in change[name])
                     for name in ('input', 'read', 'map')]
                    + [f'{name} ' + ' / '.join(f'{c:.2f}x' for c in change[name])
                       for name in ('key', 'error', 'gain')])
                print(f'{variant} | seed {seed} | {g} | head {head["ratio"]:.2e}, consistency '
                      f'{head["consistency"]:.3f}, toward {head["toward"]:.2f}', flush=True)
        return

    if args.single:
        task, variant, seed = args.single
        path = result_path(args, task, variant, int(seed))
        os.makedirs(osp.dirname(path), exist_ok=True)
        checkpoint = path.replace('.json', '.ckpt.pth')
        result = train_one(task, variant, int(seed), args, checkpoint)
        with open(path + '.partial', 'w') as f:
            json.dump(result, f, indent=1)
        os.replace(path + '.partial', path)  # only a complete result carries the final name
        if osp.exists(checkpoint):
            os.remove(checkpoint)
        return

    jobs = [(t, v, s) for t in args.tasks for v in args.variants for s in args.seeds]
    if args.list:
        for job in jobs:
            print(*job, sep=' | ', end=' | ')
            checkpoint = result_path(args, *job).replace('.json', '.ckpt.pth')
            print('done' if find_result(args, job) else
                  'to run, from its checkpoint' if osp.exists(checkpoint) else 'to run')
        return
    pending = [j for j in jobs if not find_result(args, j)]
    if not args.summary:
        print(f'{len(jobs)} runs, {len(jobs) - len(pending)} already done, {len(pending)} to run, '
              f'{args.jobs} at a time; logs beside the results under {args.work_dir}', flush=True)
        t0, done = time.perf_counter(), [0]

        def one(job):
            task, variant, seed = job
            path = result_path(args, *job)
            if find_result(args, job):  # finished meanwhile by another invocation: keep its log
                done[0] += 1
                print(f'[{done[0]}/{len(pending)}] {task} | {variant} | seed {seed}: already done',
                      flush=True)
                return
            os.makedirs(osp.dirname(path), exist_ok=True)
            cmd = [sys.executable, osp.abspath(__file__), '--single', task, variant, str(seed)]
            for key in ('stages', 'size', 'marker', 'marker_label', 'iters', 'batch', 'lr',
                        'eval_scenes', 'log_every', 'eval_every', 'work_dir', 'cache'):
                cmd += [f'--{key.replace("_", "-")}', str(getattr(args, key))]
            env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
            # appended to: a run cut off earlier resumes from its checkpoint, and its log goes on
            with open(path.replace('.json', '.log'), 'a') as log:
                rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT).returncode
            done[0] += 1
            if rc or not osp.exists(path):
                print(f'[{done[0]}/{len(pending)}] {task} | {variant} | seed {seed}: FAILED '
                      f'(exit {rc}), see {path.replace(".json", ".log")}', flush=True)
                return
            r = json.load(open(find_result(args, job)))  # and archived
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

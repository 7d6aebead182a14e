"""Train ConvNeur and peer backbones on the offline real-data sets, with the ablations.

    python tools/prepare_data.py                 # once: data/fashion_mnist, nuclei, fashion_scenes
    python tools/compare_real.py                 # the nuclei / Fashion-MNIST demos' tables
    python tools/compare_real.py --tasks cls --runs convneur-m1 resnet18 --seeds 0
    python tools/compare_real.py --list          # what would run

The scenes protocol, the paper's in miniature (Fashion-MNIST scenes, tools/prepare_data.py), one
command per table (``TABLES``, listed by ``--help``), each sized for about 90 minutes on 2 cores:

    python tools/compare_real.py --table pretraining               # pre-train on the 60k images
    python tools/compare_real.py --table seg-ft                    # fine-tune the segmenters
    python tools/compare_real.py --table seg-ft --split test       # the finals, on the test scenes
    python tools/compare_real.py --table det --scale 4             # 4x the iterations, own folder
    python tools/compare_real.py --tasks scenes-seg scenes-seg-ft --runs convneur-m1 --seeds 0

``scenes-det`` / ``scenes-seg`` train from scratch; the ``-ft`` tasks start every backbone from
its own ``scenes-cls`` classifier (seed 0, loaded with ``prefix='backbone.'``), which runs first;
``--budget scenes-cls=2`` fine-tunes from two-epoch classifiers, in a folder of their own.
They also hold ResNet-18 and ConvNeXt-V2-atto with a memory gate, GCNet's ContextBlock or
NonLocal2d after stages 2-4 (``--runs "resnet18 memory-gate"``), each read against the bare peer.
Recipe choices are made on the validation scenes (``--split val``, the default); ``--split test``
evaluates the finished runs' checkpoints on the test scenes without training them again.

Each run is the matching config (configs/demo/, configs/scenes/) with only the backbone swapped
(and the neck's input channels), the same recipe, schedule and budget for every model of a task,
and a different ``randomness.seed``. Runs go to ``--work-dir/<task>/<run>/seed<k>`` and are
started as ``tools/train.py`` subprocesses, ``--jobs`` at a time with the CPU threads split
between them. A finished run is not repeated (its metrics are read back), so an interrupted
comparison continues where it stopped; a run cut off midway resumes from its last checkpoint
(every epoch, or every 100 iterations). Each task's table (mean ± 95% CI over seeds) goes to
``--work-dir/<task>/results.md`` and every single result to ``results.csv`` beside it; a table
holds every finished run of its task and budget, whichever invocation trained it.

Every finished result is also kept in ``--archive`` (default ``docs/results/compare_real`` in the
repository, one small JSON per run, committed with the docs), so that a table survives a new
machine or a cleaned ``work_dirs``: a run found only there is not trained again. Its checkpoint is
not archived, so ``--split test`` of such a run, and fine-tuning from an archived classifier,
need it trained again (the classifier is retrained automatically; ``--split test`` says which
archive file to delete).
"""
import argparse
import copy
import csv
import glob
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from mmengine.config import Config

# mmengine imports pkg_resources, whose deprecation warning would repeat for every config built
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from convneur_mm import archive
from convneur_mm.checkpoint import last_checkpoint
from convneur_mm.models.convneur import ConvNeur
from convneur_mm.presets import (C3_C5_PLACES, CONVNEXTV2, GLOBAL_BRANCHES, ONE_RECIPE_OPTIM,
                                 gated_peer)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_METRICS = {'bbox mAP': 'coco/bbox_mAP', 'segm mAP': 'coco/segm_mAP'}
# An iteration-based run saves a checkpoint this often, so that a run cut off midway resumes
# (mmengine's resume advances the data loader, so it continues exactly); only the latest is kept.
CHECKPOINT_EVERY = 100
TASKS = {
    'cls': dict(config='configs/demo/convneur-m1_fashion-mnist.py', budget=dict(max_epochs=1),
                metrics={'top-1': 'accuracy/top1'}, data='fashion_mnist'),
    'seg': dict(config='configs/demo/fpn_convneur-m1_nuclei-seg.py', budget=dict(max_iters=60),
                metrics={'mIoU': 'mIoU'}, data='nuclei'),
    'det': dict(config='configs/demo/mask-rcnn_convneur-m1_fpn_nuclei.py',
                budget=dict(max_iters=150), metrics=DET_METRICS, data='nuclei'),
    'scenes-cls': dict(config='configs/scenes/convneur-m1_fashion-mnist-60k.py',
                       budget=dict(max_epochs=1), metrics={'top-1': 'accuracy/top1'},
                       data='fashion_scenes'),
    # 200 iterations: at 100 the pre-trained segmenters still found only 2-3 of the 10 classes
    'scenes-seg': dict(config='configs/scenes/fpn_convneur-m1_scenes-seg.py',
                       budget=dict(max_iters=200), metrics={'mIoU': 'mIoU'}, data='fashion_scenes'),
    'scenes-det': dict(config='configs/scenes/mask-rcnn_convneur-m1_fpn_scenes.py',
                       budget=dict(max_iters=300), metrics=DET_METRICS, data='fashion_scenes'),
}
# fine-tuning from the scenes-cls classifier of the same backbone: the same configs and budgets
for _task in ('scenes-seg', 'scenes-det'):
    TASKS[f'{_task}-ft'] = dict(TASKS[_task], pretrain='scenes-cls')


def kind(task):
    """'cls', 'seg' or 'det': the OpenMMLab task behind a table."""
    return task.split('-')[1] if task.startswith('scenes-') else task


# Backbones per task scope; (backbone cfg, output channels, extra model overrides).
CONVNEXTV2_ATTO = dict(arch='atto', **CONVNEXTV2, drop_path_rate=0.)
CONVNEXTV2_FEMTO = dict(CONVNEXTV2_ATTO, arch='femto')
PVTV2_B0 = dict(embed_dims=32, num_layers=[2, 2, 2, 2], drop_path_rate=0.)


def peers(task):
    scenes, task = task.startswith('scenes-'), kind(task)
    scope = dict(cls='', seg='mmpretrain.', det='mmpretrain.')[task]
    pvt = 'mmdet.' if task != 'det' else ''
    dense = task != 'cls'
    out = dict(out_indices=(0, 1, 2, 3)) if dense else {}
    table = {
        'resnet18': (dict(type=f'{scope}ResNet', depth=18, **out), [64, 128, 256, 512]),
        'convnextv2-atto': (dict(type=f'{scope}ConvNeXt', **CONVNEXTV2_ATTO, **out,
                                 gap_before_final_norm=not dense), [40, 80, 160, 320]),
        'pvtv2-b0': (dict(type=f'{pvt}PyramidVisionTransformerV2', **PVTV2_B0), [32, 64, 160, 256]),
    }
    if task == 'det':
        # mmdet's own ResNet (BN, trained from scratch here, so not frozen and not in eval mode)
        table['resnet18'] = (dict(type='ResNet', depth=18, frozen_stages=-1, norm_eval=False,
                                  init_cfg=None), [64, 128, 256, 512])
    if scenes:  # the peers: ConvNeXt-V2 femto too, no DeiT
        table['convnextv2-femto'] = (dict(type=f'{scope}ConvNeXt', **CONVNEXTV2_FEMTO, **out,
                                          gap_before_final_norm=not dense), [48, 96, 192, 384])
        return table
    if task == 'cls':
        # Patch 8 at 32x32 (16 tokens); patch 16 would leave 4, patch 4 costs 4x more.
        table['deit-tiny'] = (dict(type='VisionTransformer', arch='deit-tiny', img_size=32,
                                   patch_size=8, drop_path_rate=0.), [192])
    if task == 'seg':
        table['deit-tiny'] = (dict(type='mmpretrain.VisionTransformer', arch='deit-tiny',
                                   img_size=256, patch_size=16, out_type='featmap',
                                   out_indices=(2, 5, 8, 11), final_norm=False,
                                   drop_path_rate=0.), [192] * 4)
    return table


# The memory setting every ConvNeur run of these tables was measured with: the sequential form,
# the default until 2026-12. Kept so that a run resumed or added to a table (and the archived
# results it is read against) computes the same function; 'group=all' runs set None.
TABLES_MEMORY = dict(chunks_per_group=1)
# ConvNeur variants: keyword overrides of the demo's ConvNeur backbone.
CONVNEUR = {
    'convneur-m1': dict(),
    'convneur-m2': dict(arch='m2'),
    'm1 read_mode=prev': dict(read_mode='prev'),
    'm1 placement=block': dict(memory_placement='block'),
    'm1 placement=none': dict(memory_placement='none'),
    'm1 fusion=add': dict(fusion='add'),
}
# With the demo's chunk sizes every stage of these small images fits in one chunk, where 'prev'
# can only read the initial memory; these two compare the read modes with several chunks.
SMALL_CHUNK = {'cls': 16, 'seg': 256, 'det': 256}
CONVNEUR.update({
    'm1 chunk=small read_mode=final': dict(chunk_size='small'),
    'm1 chunk=small read_mode=prev': dict(chunk_size='small', read_mode='prev'),
    # Titans' parallel form (every chunk's gradient at the stage's initial memory) against the
    # sequential one above
    'm1 chunk=small group=all': dict(chunk_size='small', chunks_per_group=None),
    # not a paper ablation: the residual branches start at 1e-6 (layer scale), which may slow
    # such short from-scratch runs; ConvNeXt-V2 has no layer scale
    'm1 layer_scale=off': dict(layer_scale_init_value=0.),
    # the local body alone without layer scale: closest to ConvNeXt-V2 (which has GRN instead)
    'm1 placement=none layer_scale=off': dict(memory_placement='none', layer_scale_init_value=0.),
    # not a paper ablation: training starts from the local-only network (zero memory
    # projection) and the memory enters as it learns
    'm1 zero_init_memory': dict(zero_init_memory=True),
    # not a paper ablation: the gate starts at sigmoid(2) = 0.88 instead of 1/2, so the branches
    # are not halved while their layer scales are still small
    'm1 gate_bias=2': dict(gate_bias_init=2.0),
    # not a paper ablation: the gate 2 * sigmoid(G) starts at 1 with the sigmoid's full slope;
    # with layer scale, the same functions as M1 (a reparametrisation)
    'm1 gate_scale=2': dict(gate_scale=2.0),
    # the paper's ablations at the scenes' own chunk sizes
    'm1 group=all': dict(chunks_per_group=None),
    'm1 memory=mlp': dict(memory_type='mlp'),
    # the paper's C_m ablation (64 / 128 / 256 on M3) as half and twice M1's 32 in every stage;
    # heads stay 32 wide where C_m allows it, as in the presets
    'm1 C_m=16': dict(arch=dict(ConvNeur.arch_zoo['m1'], memory_dim=16, head_dim=16)),
    'm1 C_m=64': dict(arch=dict(ConvNeur.arch_zoo['m1'], memory_dim=64)),
    # not paper ablations: the local body without memory and layer scale, with ConvNeXt-V2's
    # stem or GRN, the two differences left between it and ConvNeXt-V2-atto besides depth
    'm1 placement=none layer_scale=off stem=patchify': dict(
        memory_placement='none', layer_scale_init_value=0., stem='patchify'),
    'm1 placement=none layer_scale=off grn': dict(
        memory_placement='none', layer_scale_init_value=0., use_grn=True),
    # not a paper ablation: the whole M1 (memory, layer scale) with ConvNeXt-V2's stem
    'm1 stem=patchify': dict(stem='patchify'),
    # not a paper ablation: keys centred on the image's mean key (the option that lets the memory
    # carry a small object's bit in tools/global_context.py), measured on real dense accuracy
    'm1 center_keys': dict(center_keys=True),
    # and with the global read added to the residual stream: the variant that learned the
    # one-bit scene task in every seed once the cross was not labelled background
    'm1 center_keys global_query fusion=add': dict(center_keys=True, global_query=True,
                                                   fusion='add'),
})
# Pre-trained peers with a global branch after stages 2-4, started from the peer's own
# classifier; every branch starts as the identity, so each run starts from the bare peer.
GATED = {f'{peer} {gate}': (peer, gate) for peer in C3_C5_PLACES for gate in GLOBAL_BRANCHES}
MAIN = ['convneur-m1', 'convneur-m2', 'resnet18', 'convnextv2-atto', 'pvtv2-b0', 'deit-tiny']
SCENES = ['convneur-m1', 'convneur-m2', 'm1 placement=none', 'm1 placement=none layer_scale=off',
          'm1 zero_init_memory', 'm1 layer_scale=off', 'm1 gate_bias=2', 'm1 gate_scale=2',
          'resnet18', 'convnextv2-atto', 'convnextv2-femto', 'pvtv2-b0']

# ConvNeXt-V2's stem or GRN in M1's local body (local-det), and its stem in the whole M1 (stem-det)
LOCAL_BODY = ['m1 placement=none layer_scale=off stem=patchify',
              'm1 placement=none layer_scale=off grn', 'm1 stem=patchify']
# Variants added for the scenes protocol, not run on the demo sets.
SCENES_ONLY = ('m1 gate_bias=2', 'm1 gate_scale=2', 'm1 placement=none layer_scale=off',
               'm1 group=all', 'm1 memory=mlp', 'm1 C_m=16', 'm1 C_m=64', *LOCAL_BODY,
               'm1 center_keys', 'm1 center_keys global_query fusion=add')
# Run by name (--runs) or by their tables, not part of the default tables: the paper's ablations
# on the scenes, the local-body probes and centred keys.
SCENES_ABLATIONS = ['m1 placement=block', 'm1 fusion=add', 'm1 read_mode=prev', 'm1 group=all',
                    'm1 memory=mlp', 'm1 C_m=16', 'm1 C_m=64', *LOCAL_BODY, 'm1 center_keys',
                    'm1 center_keys global_query fusion=add']

# The scenes tables, one command each (--table NAME), seeds 0-2. Each is sized for about 90
# minutes on 2 cores, two runs side by side with one thread each (measured: a pre-training run
# 6-8 minutes, a 200-iteration segmentation run 9-11; a 300-iteration detection run, from a
# 30-iteration one, about 10), not counting a fine-tuning table's pre-training runs where they
# are not done yet (the pretraining table does them).
MAIN_SCENES = ['convneur-m1', 'convneur-m2', 'resnet18', 'convnextv2-atto', 'convnextv2-femto',
               'pvtv2-b0']
TABLES = {
    'pretraining': dict(tasks=['scenes-cls'], runs=MAIN_SCENES),
    'recipe': dict(tasks=['scenes-cls'], runs=['convneur-m1', 'm1 placement=none',
                                                'm1 zero_init_memory', 'm1 layer_scale=off',
                                                'm1 gate_bias=2', 'm1 gate_scale=2']),
    # the same candidates in from-scratch detection: chosen there on the validation scenes, which
    # are disjoint from the test scenes (scenes-cls validates on its test images)
    'recipe-det': dict(tasks=['scenes-det'], runs=['convneur-m1', 'm1 placement=none',
                                                   'm1 placement=none layer_scale=off',
                                                   'm1 zero_init_memory', 'm1 layer_scale=off',
                                                   'm1 gate_bias=2', 'm1 gate_scale=2']),
    'ablations': dict(tasks=['scenes-cls'], runs=['convneur-m1', 'm1 placement=none',
                                                   'm1 placement=block', 'm1 fusion=add',
                                                   'm1 memory=mlp', 'm1 C_m=16', 'm1 C_m=64']),
    # the same ablations in fine-tuned detection, each from its own classifier of the table above
    'ablations-det-ft': dict(tasks=['scenes-det-ft'], runs=['convneur-m1', 'm1 placement=none',
                                                           'm1 placement=block', 'm1 fusion=add',
                                                           'm1 memory=mlp']),
    # why M1's local body learns detection from scratch slower than ConvNeXt-V2-atto: the body
    # without memory and layer scale, with atto's stem or its GRN, each read against the body
    'local-det': dict(tasks=['scenes-det'], runs=['m1 placement=none layer_scale=off',
                                                  *LOCAL_BODY, 'convnextv2-atto'],
                      reference='m1 placement=none layer_scale=off'),
    # whether ConvNeXt-V2's stem also lifts the whole M1, memory and layer scale included, in
    # detection and segmentation from scratch and in pre-training
    **{f'stem-{k}': dict(tasks=[f'scenes-{k}'], reference='convneur-m1',
                         runs=['convneur-m1', 'm1 stem=patchify', 'convnextv2-atto'])
       for k in ('det', 'seg', 'cls')},
    # what centred keys (and the global read that carried the one-bit scene task) do to
    # detection from scratch, read against M1
    'center-det': dict(tasks=['scenes-det'], runs=['convneur-m1', 'm1 center_keys',
                                                   'm1 center_keys global_query fusion=add'],
                       reference='convneur-m1'),
    **{name: dict(tasks=[f'scenes-{name}'], runs=MAIN_SCENES)
       for name in ('seg-ft', 'det-ft', 'seg', 'det')},
    **{f'plugins-{peer}': dict(tasks=['scenes-seg-ft'],
                               runs=[peer] + [f'{peer} {gate}' for gate in GLOBAL_BRANCHES])
       for peer in C3_C5_PLACES},
}
TABLE_SEEDS = [0, 1, 2]


def run_names(task, everything=False):
    """The runs of ``task``'s default table; ``everything``: also those run only by name."""
    if task.startswith('scenes-'):
        return (SCENES + (list(GATED) if task.endswith('-ft') else [])
                + (SCENES_ABLATIONS if everything else []))
    names = MAIN + [n for n in CONVNEUR if n not in MAIN and n not in SCENES_ONLY]
    if task != 'cls':
        # every stage of a 256x256 image fits in one 4096-token chunk: 'prev' then reads only
        # the initial memory (the classification runs show it); the small-chunk pair stays
        names.remove('m1 read_mode=prev')
    if task == 'det':
        # the paper's ablations run on cls and seg only
        names = [n for n in names if n in MAIN or n == 'm1 layer_scale=off']
    return [n for n in names if n in CONVNEUR or n in peers(task)]


def rebase_data(cfg, data_root):
    """Point the demo's loaders and evaluators (written for ./data) at ``data_root``."""
    def move(path):
        return osp.join(data_root, path[len('data/'):]) if path.startswith('data/') else path

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        for key in ('data_root', 'classes'):
            if isinstance(dataset.get(key), str):
                dataset[key] = move(dataset[key])
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if isinstance(cfg[evaluator].get('ann_file'), str):
            cfg[evaluator].ann_file = move(cfg[evaluator].ann_file)
    cfg.data_root = move(cfg.data_root)


def build_config(task, name, seed, work_dir, budget, data_root='data', pretrained=None):
    """The config of one run; ``pretrained``: a classifier checkpoint to start the backbone from."""
    cfg = Config.fromfile(osp.join(REPO, TASKS[task]['config']))
    rebase_data(cfg, data_root)
    model = cfg.model
    if name in CONVNEUR:
        from convneur_mm.presets import arch_channels
        overrides = dict(TABLES_MEMORY, **CONVNEUR[name])
        if overrides.get('chunk_size') == 'small':
            overrides['chunk_size'] = SMALL_CHUNK[kind(task)]
        model.backbone.update(overrides)
        channels = arch_channels(model.backbone.arch)
    else:
        peer, gate = GATED.get(name, (name, None))
        backbone, channels = peers(task)[peer]
        model.backbone = backbone
    if pretrained:  # a backbone-only file (export_backbone): no prefix
        model.backbone.init_cfg = dict(type='Pretrained', checkpoint=pretrained)
    if name in GATED:
        model.backbone = gated_peer(model.backbone, peer, gate)
        model.backbone.pop('_delete_')  # a config file's merge key: nothing to merge into here
    if kind(task) == 'cls':
        model.head.in_channels = channels[-1]
        pooled = name in CONVNEUR or name in ('convnextv2-atto', 'convnextv2-femto', 'deit-tiny')
        model.neck = (None if pooled else dict(type='convneur_mm.PoolMaps') if name == 'pvtv2-b0'
                      else dict(type='GlobalAveragePooling'))
    elif name == 'deit-tiny':
        # a plain ViT has one 1/16 map: mmseg's MultiLevelNeck makes the 1/4..1/32 pyramid
        model.neck = dict(type='MultiLevelNeck', in_channels=channels,
                          out_channels=model.neck.out_channels, scales=[4, 2, 1, 0.5])
    else:
        model.neck.in_channels = channels
    cfg.optim_wrapper.update(copy.deepcopy(ONE_RECIPE_OPTIM))
    if 'max_epochs' in budget:
        epochs = budget['max_epochs']
        cfg.train_cfg.max_epochs = cfg.train_cfg.val_interval = epochs
        cfg.default_hooks.checkpoint.interval = 1  # an epoch is where a resume is exact
        # the demo's one-epoch warm-up, as 10% of the run, so that one epoch is a valid budget
        with open(osp.join(REPO, cfg.data_root, 'meta', 'train.txt')) as f:
            iters = epochs * -(-len(f.readlines()) // cfg.train_dataloader.batch_size)
    else:
        iters = budget['max_iters']
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = iters
        cfg.default_hooks.checkpoint.interval = min(iters, CHECKPOINT_EVERY)
    cfg.default_hooks.checkpoint.max_keep_ckpts = 1
    for key, n in budget.items():  # the base's own budget variable, so the dumped config reads true
        if key in cfg:
            cfg[key] = n
    warmup = max(1, iters // 10)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup)]
    if iters > warmup:  # a run of one iteration (a smoke test) has no decay
        cfg.param_scheduler.append(dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False,
                                        begin=warmup, end=iters))
    cfg.default_hooks.visualization = dict(type=cfg.default_hooks.visualization.type, draw=False) \
        if kind(task) != 'cls' else dict(type='VisualizationHook', enable=False)
    cfg.randomness = dict(seed=seed)
    cfg.work_dir = work_dir
    return cfg


def read_metrics(work_dir, task, test=False):
    """The final validation metrics of a finished run (``test``: of its test run), or None."""
    if not osp.isdir(work_dir):
        return None
    keys = TASKS[task]['metrics']
    for stamp in sorted(os.listdir(work_dir), reverse=True):
        path = (osp.join(work_dir, stamp, f'{stamp}.json') if test else
                osp.join(work_dir, stamp, 'vis_data', 'scalars.json'))
        if not osp.isfile(path):
            continue
        with open(path) as f:
            for line in reversed(f.read().splitlines()):
                entry = json.loads(line)
                if all(k in entry for k in keys.values()):
                    return {name: entry[k] * (100 if kind(task) == 'det' else 1)
                            for name, k in keys.items()}
    return None


def job_of(result):
    return result['task'], result['run'], result['seed']


def run_dir(args, task, name, seed):
    """``<work_dir>/<task>/<run>/seed<k>``; a budget other than the task's default adds its value
    to the task's folder (``scenes-seg-ft-300it``), and so does a fine-tuning's pre-training budget
    (``scenes-det-ft-pre2ep``), so that runs of different budgets never stand in for each other."""
    folder = task + _budget_suffix(args, task)
    pretrain = TASKS[task].get('pretrain')
    if pretrain and _budget_suffix(args, pretrain):
        folder += '-pre' + _budget_suffix(args, pretrain)[1:]
    return osp.join(args.work_dir, folder, name.replace(' ', '_').replace('=', '-'),
                    f'seed{seed}')


def _budget_suffix(args, task):
    """'' for the task's default budget, else ``-<n>ep`` or ``-<n>it``."""
    budget = getattr(args, 'budget', {}).get(task, TASKS[task]['budget'])
    if budget == TASKS[task]['budget']:
        return ''
    (key, n), = budget.items()
    return f'-{n}{"ep" if key == "max_epochs" else "it"}'


def pretraining(name):
    """The scenes-cls run whose classifier starts ``name``: its own, or its peer's if gated."""
    return GATED[name][0] if name in GATED else name


def backbone_checkpoint(args, name):
    """Where the backbone weights of ``name``'s pre-training (scenes-cls, seed 0) go."""
    return osp.join(run_dir(args, 'scenes-cls', pretraining(name), 0), 'backbone.pth')


def export_backbone(work_dir):
    """Write the backbone of a run's last checkpoint, without the ``backbone.`` prefix, to
    ``backbone.pth``: mmdet's PVTv2 loads a Pretrained checkpoint ignoring ``prefix``, so only an
    unprefixed file starts every peer from its own weights."""
    import torch
    state = torch.load(last_checkpoint(work_dir), map_location='cpu',
                       weights_only=True)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torch.save(dict(state_dict=backbone), osp.join(work_dir, 'backbone.pth'))


def archive_path(args, work_dir):
    """``<archive>/<task>/<run>/seed<k>.json`` for the run in ``work_dir``; None without archive."""
    return archive.archive_path(work_dir + '.json', args.work_dir, getattr(args, 'archive', None))


def save_result(args, work_dir, result):
    """Write a run's result to its work dir and to the archive."""
    paths = [osp.join(work_dir, 'result.json'), archive_path(args, work_dir)]
    for path in filter(None, paths):
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(result, f, indent=1, sort_keys=True)
            f.write('\n')


def load_result(args, work_dir):
    """A finished run's result, from its work dir or else from the archive; None if unfinished.

    A result found only in its work dir (trained before the archive existed) is archived too.
    """
    path = archive.find(osp.join(work_dir, 'result.json'), archive_path(args, work_dir))
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def prepare(task, name, seed, args):
    """Work dir of a run and its result if it has finished; writes its config otherwise."""
    work_dir = run_dir(args, task, name, seed)
    done = load_result(args, work_dir)
    if done is None:
        write_config(task, name, seed, work_dir, args)
    return work_dir, done


def write_config(task, name, seed, work_dir, args):
    os.makedirs(work_dir, exist_ok=True)
    pretrained = backbone_checkpoint(args, name) if TASKS[task].get('pretrain') else None
    build_config(task, name, seed, work_dir, args.budget[task], args.data_root,
                 pretrained).dump(osp.join(work_dir, 'config.py'))


def _run_tool(tool, argv, log_path, threads, mode='w'):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path, mode) as log:
        return subprocess.run([sys.executable, osp.join(REPO, tool), *argv], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode


def train(task, name, seed, work_dir, threads, args):
    t, code = time.perf_counter(), archive.code_version()
    argv = [osp.join(work_dir, 'config.py'), '--work-dir', work_dir]
    # an unfinished run with a checkpoint was cut off: it goes on from there, and so does its log
    resume = osp.isfile(osp.join(work_dir, 'last_checkpoint'))
    rc = _run_tool('tools/train.py', argv + ['--resume'] * resume,
                   osp.join(work_dir, 'train.log'), threads, mode='a' if resume else 'w')
    seconds = time.perf_counter() - t
    metrics = read_metrics(work_dir, task)
    if rc or metrics is None:
        raise RuntimeError(f'{task} / {name} / seed {seed} failed (exit {rc}); '
                           f'see {osp.join(work_dir, "train.log")}')
    if task == 'scenes-cls':
        export_backbone(work_dir)
    result = dict(task=task, run=name, seed=seed, seconds=seconds, code=code, **metrics)
    if resume:  # its seconds and code are those of the last part only
        result['resumed'] = True
    save_result(args, work_dir, result)
    return result


def test(result, work_dir, threads, args):
    """Evaluate a finished run's last checkpoint on its config's test split; adds ``test``."""
    task, name, seed = result['task'], result['run'], result['seed']
    if not osp.isfile(osp.join(work_dir, 'last_checkpoint')):
        raise RuntimeError(f'{task} / {name} / seed {seed}: its result comes from the archive '
                           f'without test metrics and its checkpoint is not in {work_dir}; '
                           f'delete {archive_path(args, work_dir)} to train it again')
    checkpoint = last_checkpoint(work_dir)
    test_dir = osp.join(work_dir, 'test')
    rc = _run_tool('tools/test.py', [osp.join(work_dir, 'config.py'), checkpoint,
                                     '--work-dir', test_dir],
                   osp.join(work_dir, 'test.log'), threads)
    metrics = read_metrics(test_dir, task, test=True)
    if rc or metrics is None:
        raise RuntimeError(f'{task} / {name} / seed {seed}: test failed (exit {rc}); '
                           f'see {osp.join(work_dir, "test.log")}')
    result = dict(result, test=metrics)
    save_result(args, work_dir, result)
    return result


def budgets(overrides, scale=1.0):
    """Every task's budget: its default, ``overrides`` (``TASK=N`` strings), then times ``scale``.

    Returns ``{task: {'max_iters' or 'max_epochs': n}}`` with every n >= 1.
    """
    if not scale > 0:
        raise ValueError(f'--scale must be > 0, got {scale}')
    budget = {t: dict(v['budget']) for t, v in TASKS.items()}
    for item in overrides:
        task, _, n = item.partition('=')
        if task not in TASKS or not n.isdigit() or int(n) < 1:
            raise ValueError(f'--budget expects TASK=N with TASK in {list(TASKS)}, got {item!r}')
        key = next(iter(budget[task]))
        budget[task][key] = int(n)
    return {t: {k: max(1, round(n * scale)) for k, n in b.items()} for t, b in budget.items()}


def table_rows(args, task, results, jobs):
    """The folder of ``task``'s table at this budget and every finished run in it.

    A table holds the runs of this invocation (in the order of ``jobs``) and, after them, those
    that earlier invocations with other ``--runs`` or ``--seeds`` left in the same folder.
    """
    folder = osp.dirname(osp.dirname(run_dir(args, task, 'x', 0)))
    rows = {job_of(r): r for r in results if r['task'] == task}
    paths = sorted(glob.glob(osp.join(folder, '*', 'seed*', 'result.json')))
    archived = archive_path(args, folder)
    if archived:
        paths += sorted(glob.glob(osp.join(archived[:-len('.json')], '*', 'seed*.json')))
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        rows.setdefault(job_of(r), r)
    order = {job: i for i, job in enumerate(jobs)}
    return folder, sorted(rows.values(), key=lambda r: (order.get(job_of(r), len(order)),
                                                        r['run'], r['seed']))


def write_results(folder, results):
    """Every single result of a table, one row per run, to ``folder/results.csv``."""
    metrics = list(dict.fromkeys(m for t in TASKS for m in TASKS[t]['metrics']))
    fields = (['task', 'run', 'seed', 'seconds', 'code', 'resumed'] + metrics
              + [f'test {m}' for m in metrics])
    os.makedirs(folder, exist_ok=True)
    with open(osp.join(folder, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in results:
            writer.writerow({**{k: v for k, v in r.items() if k != 'test'},
                             **{f'test {m}': v for m, v in r.get('test', {}).items()}})


def summarize(results, args):
    from convneur_mm.stats import fmt, separated

    def value(r, m):
        return r['test'][m] if args.split == 'test' else r[m]

    tasks = [t for t in args.tasks if any(r['task'] == t for r in results)]
    lines = ['Budget: ' + ', '.join(f'{t} {args.budget[t]}' for t in tasks)
             + f'; {args.split} split; mean ± 95% CI over seeds.', '']
    for task in tasks:
        rows = [r for r in results if r['task'] == task and (args.split != 'test' or 'test' in r)]
        if not rows:
            continue
        metrics = list(TASKS[task]['metrics'])
        lines += [f'### {task}', '', '| run | ' + ' | '.join(metrics) + ' | seeds | s / run |',
                  '|---' * (len(metrics) + 3) + '|']
        by_run = {name: [r for r in rows if r['run'] == name]
                  for name in dict.fromkeys(r['run'] for r in rows)}
        for name, mine in by_run.items():
            cells = [fmt([value(r, m) for r in mine], 2) for m in metrics]
            secs = [r['seconds'] for r in mine if r['seconds']]
            lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {len(mine)} | '
                         + (f'{statistics.mean(secs):.0f}' if secs else '-') + ' |')
        for metric in metrics:
            readings = []
            for name, mine in by_run.items():
                # against M1 (or the table's reference); a gated peer against the bare peer
                ref = GATED[name][0] if name in GATED else getattr(args, 'reference', 'convneur-m1')
                reference = by_run.get(ref, [])
                if name == ref or len(mine) < 2 or len(reference) < 2:
                    continue
                side = separated([value(r, metric) for r in reference],
                                 [value(r, metric) for r in mine])
                readings.append(f'{name}: ' + {'a': f'{ref} higher', 'b': f'{name} higher',
                                               None: 'not separated'}[side] + f' (against {ref})')
            if readings:
                lines += ['', f'{metric}, 95% CIs: ' + '; '.join(readings)]
        lines.append('')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--table', choices=list(TABLES),
                        help='one of the scenes tables: its tasks, runs and seeds 0-2 (--seeds '
                             'overrides the seeds)')
    parser.add_argument('--tasks', nargs='+', choices=list(TASKS),
                        help='default: the nuclei / Fashion-MNIST demo tasks cls seg det')
    parser.add_argument('--runs', nargs='+', metavar='RUN',
                        help='which runs (default: all of a task); names as in --list')
    parser.add_argument('--seeds', nargs='+', type=int, help='default: 0 1 (0 1 2 for a --table)')
    parser.add_argument('--jobs', type=int, default=2, help='runs in parallel')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads per run (default: the cores split over --jobs); set it '
                             'when another process shares the cores')
    parser.add_argument('--work-dir', default='work_dirs/compare_real')
    parser.add_argument('--archive', default=osp.join('docs', 'results', 'compare_real'),
                        help='where every finished result is also kept, relative to the '
                             'repository (default: %(default)s); "" turns it off')
    parser.add_argument('--data-root', default='data',
                        help='where tools/prepare_data.py wrote fashion_mnist/, nuclei/ and '
                             'fashion_scenes/')
    parser.add_argument('--budget', nargs='+', default=[], metavar='TASK=N',
                        help='override a budget, e.g. cls=2 (epochs) seg=100 det=100 (iterations)')
    parser.add_argument('--scale', type=float, default=1.0,
                        help='multiply every budget (after --budget), e.g. 4 for runs four times '
                             'longer; a budget of its own keeps them in their own folders')
    parser.add_argument('--split', choices=('val', 'test'), default='val',
                        help='the split the table reports; test evaluates finished runs\' '
                             'checkpoints on the test scenes (scenes tasks only)')
    parser.add_argument('--list', action='store_true', help='print the runs and exit')
    parser.add_argument('--dry-run', action='store_true',
                        help='write every config and build its model, train nothing')
    args = parser.parse_args()
    for name, value in (('jobs', args.jobs), ('threads', args.threads)):
        if value is not None and value < 1:
            parser.error(f'--{name} must be >= 1, got {value}')
    if args.table:
        if args.tasks or args.runs:
            parser.error('--table sets the tasks and runs; give either --table or --tasks/--runs')
        args.tasks, args.runs = TABLES[args.table]['tasks'], TABLES[args.table]['runs']
        args.reference = TABLES[args.table].get('reference', 'convneur-m1')
    args.tasks = args.tasks or ['cls', 'seg', 'det']
    args.seeds = args.seeds or (TABLE_SEEDS if args.table else [0, 1])
    try:
        args.budget = budgets(args.budget, args.scale)
    except ValueError as e:
        parser.error(str(e))
    if args.split == 'test' and not all(t.startswith('scenes-') for t in args.tasks):
        parser.error('--split test needs scenes tasks only: the demo sets have no test split')
    for task in args.tasks:
        folder = osp.join(args.data_root, TASKS[task]['data'])
        if not osp.isdir(osp.join(REPO, folder)):
            raise SystemExit(f'{folder} is missing: run `python tools/prepare_data.py '
                             f'--out {args.data_root}` first')
    jobs = []
    for task in args.tasks:
        names = run_names(task, everything=bool(args.runs))
        if args.runs:
            unknown = [r for r in args.runs
                       if not any(r == n for t in TASKS for n in run_names(t, everything=True))]
            if unknown:
                parser.error(f'unknown runs {unknown}; see --list')
            names = [n for n in names if n in args.runs]
        jobs += [(task, n, s) for n in names for s in args.seeds]
    # a fine-tuning run needs its backbone's pre-training (seed 0), which therefore runs first
    needed = [('scenes-cls', pretraining(n), 0) for t, n, _ in jobs if TASKS[t].get('pretrain')]
    jobs = list(dict.fromkeys(needed + jobs))
    if args.list:
        for job in jobs:
            print(*job, sep=' | ')
        return
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    print(f'{len(jobs)} runs, {args.jobs} at a time with {threads} thread(s) each; '
          f'logs under {args.work_dir}', flush=True)
    results = []
    pending = []
    # Configs are built here, one after the other: mmengine's config loading is not thread-safe.
    for job in jobs:
        work_dir, done = prepare(*job, args)
        if done is None:
            pending.append((job, work_dir))
        else:
            results.append(done)
    # A fine-tuning run starts from its classifier's backbone.pth, which the archive does not
    # keep: an archived classifier whose checkpoint is gone is trained again first.
    for job in dict.fromkeys(('scenes-cls', pretraining(j[1]), 0) for j, _ in pending
                             if TASKS[j[0]].get('pretrain')):
        if not osp.isfile(backbone_checkpoint(args, job[1])) and \
                all(job != j for j, _ in pending):
            print(f'{" | ".join(map(str, job))}: archived, but its classifier is not on this '
                  f'machine; training it again for the runs that start from it', flush=True)
            results = [r for r in results if job_of(r) != job]
            work_dir = run_dir(args, *job)
            write_config(*job, work_dir, args)
            pending.insert(0, (job, work_dir))
    print(f'{len(results)} already done, {len(pending)} to train', flush=True)
    if args.dry_run:
        from convneur_mm.engine.launch import build_task_model
        for job, work_dir in pending:
            model = build_task_model(Config.fromfile(osp.join(work_dir, 'config.py')))
            print(f'{job[0]} | {job[1]}: {type(model.backbone).__name__}, '
                  f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters', flush=True)
        return
    t0 = time.perf_counter()
    work_dirs = {job: run_dir(args, *job) for job in jobs}

    def one(job, work_dir):
        res = train(*job, work_dir, threads, args)
        shown = ', '.join(f'{k} {res[k]:.2f}' for k in TASKS[job[0]]['metrics'])
        results.append(res)
        print(f'[{len(results)}/{len(jobs)}, {time.perf_counter() - t0:.0f} s] {job[0]} | '
              f'{job[1]} | seed {job[2]}: {shown} ({res["seconds"]:.0f} s)', flush=True)

    def evaluate(index):
        results[index] = test(results[index], work_dirs[job_of(results[index])], threads, args)
        shown = ', '.join(f'{k} {v:.2f}' for k, v in results[index]['test'].items())
        print(f'[test] {" | ".join(map(str, job_of(results[index])))}: {shown}', flush=True)

    failures = []

    def run_all(fn, items):
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(fn, *item) for item in items]:
                try:
                    future.result()
                except RuntimeError as e:
                    failures.append(str(e))
                    print(e, flush=True)

    # pre-training first: the fine-tuning runs start from its checkpoints
    run_all(one, [p for p in pending if p[0][0] == 'scenes-cls'])
    run_all(one, [p for p in pending if p[0][0] != 'scenes-cls'])
    if args.split == 'test':
        run_all(evaluate, [(i,) for i, r in enumerate(results) if 'test' not in r])
    texts = []
    for task in args.tasks:
        folder, rows = table_rows(args, task, results, jobs)
        write_results(folder, rows)
        text = summarize(rows, args)
        with open(osp.join(folder, 'results.md'), 'w') as f:
            f.write(text + '\n')
        texts.append(text)
    text = '\n'.join(texts)
    print('\n' + text)
    if failures:
        raise SystemExit(f'{len(failures)} run(s) failed:\n' + '\n'.join(failures))


if __name__ == '__main__':
    main()

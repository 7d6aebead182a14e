"""Config checks and launch set-up shared by tools/train.py, tools/test.py and the other tools."""
import argparse
import importlib
import logging
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.logging import MMLogger, print_log
from mmengine.registry import init_default_scope

def key_value(text):
    """argparse type for ``--cfg-options``: a KEY=VALUE string, before mmengine's DictAction parses it.

    DictAction alone fails on a missing ``=`` with "not enough values to unpack".
    """
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    return text


# The offline demo of each task, named in the error a missing dataset raises.
DEMOS = {
    'mmdet': 'configs/demo/mask-rcnn_convneur-m1_fpn_nuclei.py',
    'mmseg': 'configs/demo/fpn_convneur-m1_nuclei-seg.py',
    'mmpretrain': 'configs/demo/convneur-m1_fashion-mnist.py',
}
DATASET_NAMES = {'mmdet': 'COCO 2017', 'mmseg': 'ADE20K', 'mmpretrain': 'ImageNet-1K'}


def _leaf_datasets(cfg):
    """The dataset dicts inside wrappers such as RepeatDataset or ConcatDataset."""
    if 'dataset' in cfg:
        yield from _leaf_datasets(cfg['dataset'])
    elif 'datasets' in cfg:
        for d in cfg['datasets']:
            yield from _leaf_datasets(d)
    else:
        yield cfg


def _missing_paths(dataset):
    root = dataset.get('data_root') or ''
    paths = []
    if dataset.get('ann_file'):
        paths.append(osp.join(root, dataset['ann_file']))
    prefix = dataset.get('data_prefix') or {}
    if isinstance(prefix, str):
        prefix = dict(root=prefix)
    paths += [osp.join(root, p) for p in prefix.values() if isinstance(p, str) and p]
    if not paths and root:
        paths.append(root)
    return [p for p in paths if not osp.exists(p)]


def build_task_model(cfg):
    """Build ``cfg.model`` in the config's scope (mmdet, mmseg or mmpretrain), as the Runner does.

    A top-level ``data_preprocessor`` is handed to the model, like mmengine's Runner does.
    """
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in cfg.model:
        cfg.model.data_preprocessor = cfg.data_preprocessor
    return importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model)


def build_trained_model(cfg, checkpoint):
    """:func:`build_task_model`, initialised (seed 0, the backbone's ``init_cfg`` dropped, so
    nothing is downloaded) and loaded from ``checkpoint``: a file, or ``'init'`` for the
    untrained model, as in tools/test.py. The model is returned in eval mode."""
    if checkpoint != 'init' and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist (or pass "init")')
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = build_task_model(cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights reports every parameter at INFO
    try:
        model.init_weights()
        if checkpoint != 'init':
            from mmengine.runner import load_checkpoint
            load_checkpoint(model, checkpoint, map_location='cpu', logger='current')
    finally:
        logger.setLevel(level)
    return model.eval()


def check_datasets(cfg, config_path, loaders=('train_dataloader', 'val_dataloader')):
    """Fail at once, before any model is built, if a dataset of the config is not on disk."""
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for dataset in _leaf_datasets(cfg[loader]['dataset']):
            missing = _missing_paths(dataset)
            if not missing:
                continue
            scope = cfg.get('default_scope', 'mmdet')
            name = DATASET_NAMES.get(scope, 'its dataset')
            raise SystemExit(
                f'{config_path}: {loader} needs {name}, but {missing[0]!r} does not exist.\n'
                f'Put the dataset where the config expects it (data_root '
                f'{dataset.get("data_root")!r}, relative to the current directory), or point '
                f'the config elsewhere with --cfg-options {loader}.dataset.data_root=/path/.\n'
                f'To try convneur-mm without it, run the offline demo on real images:\n'
                f'    python tools/prepare_data.py && python tools/train.py {DEMOS.get(scope, "")}')


def check_pretrained(cfg, config_path):
    """Fail at once if the backbone's ``Pretrained`` checkpoint is a local file that is missing."""
    backbone, key = cfg.model.get('backbone', {}), 'model.backbone.init_cfg'
    init_cfg = backbone.get('init_cfg')
    if init_cfg is None and isinstance(backbone.get('backbone'), dict):  # MemoryGated's backbone
        init_cfg, key = backbone.backbone.get('init_cfg'), 'model.backbone.backbone.init_cfg'
    if not isinstance(init_cfg, dict) or init_cfg.get('type') != 'Pretrained':
        return
    checkpoint = init_cfg.get('checkpoint')
    if not checkpoint or '://' in checkpoint or osp.exists(checkpoint):
        return
    # a config names its own pre-training in `pretrain_config` (the scenes protocol does)
    source = cfg.get('pretrain_config') or 'the matching configs/mmpretrain/ config'
    raise SystemExit(
        f'{config_path}: the backbone starts from the pre-trained checkpoint {checkpoint!r} '
        f'({key}), which does not exist.\n'
        f'Train it with {source}, point to yours with '
        f'--cfg-options {key}.checkpoint=PATH, or train from scratch with '
        f'--cfg-options {key}=None.')


def enable_amp(cfg):
    """Switch the config's optimizer wrapper to mmengine's AmpOptimWrapper (dynamic loss scale)."""
    if not torch.cuda.is_available():
        raise SystemExit('--amp needs a CUDA GPU (mmengine\'s AmpOptimWrapper); on a CPU, '
                         'train in fp32 (see README "Reliability" for bf16 on CPU)')
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
        raise SystemExit(f'--amp supports OptimWrapper configs only, got {wrapper.type}')
    wrapper.type = 'AmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')


def setup_cpu_distributed(cfg):
    """Start a gloo process group on a machine without GPUs, where mmengine 0.10 cannot.

    mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and wraps the model with
    CUDA device ids. Here the process group is started before the Runner (which then reuses it)
    and the model is wrapped by :class:`~convneur_mm.engine.CPUDistributedDataParallel`.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise SystemExit(f'--launcher {cfg.launcher} needs GPUs; on CPU-only machines use '
                         f'tools/dist_train.sh (torchrun, --launcher pytorch)')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        print_log(f'no GPU: using the gloo backend instead of {dist_cfg.get("backend", "nccl")!r}',
                  logger='current')
        dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')
    cfg.setdefault('model_wrapper_cfg', dict(
        type='convneur_mm.CPUDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False)))

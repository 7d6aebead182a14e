"""Config checks shared by tools/train.py and tools/test.py."""
import os.path as osp

import torch

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


def enable_amp(cfg):
    """Switch the config's optimizer wrapper to mmengine's AmpOptimWrapper (dynamic loss scale)."""
    if not torch.cuda.is_available():
        raise SystemExit('--amp needs a CUDA GPU (mmengine\'s AmpOptimWrapper); on a CPU, train '
                         'in fp32 (bf16 autocast of the model is possible, see README '
                         '"Reliability")')
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') not in ('OptimWrapper', 'AmpOptimWrapper'):
        raise SystemExit(f'--amp supports OptimWrapper configs only, got {wrapper.type}')
    wrapper.type = 'AmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')

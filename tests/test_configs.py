"""Every config under configs/ loads, builds its model and trains one step on a small CPU input."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from convneur_mm import ConvNeur, MemoryGate, MemoryGated
from convneur_mm.engine.launch import build_task_model
from convneur_mm.testing import cls_batch, det_batch, run_train_step, seg_batch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'configs').rglob('*.py'))
PAPER_CONFIGS = {  # the paper's numbers each config targets (README table)
    'configs/maskrcnn_convneur.py', 'configs/mmdet/mask-rcnn_convneur-m2_fpn_1x_coco.py',
    'configs/mmseg/upernet_convneur-m4_8xb2-amp-160k_ade20k-512x512.py',
    'configs/mmseg/fpn_convneur-m2_8xb4-40k_ade20k-512x512.py',
}


def test_config_list_is_complete():
    assert len(CONFIGS) >= 31 and PAPER_CONFIGS <= set(CONFIGS)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_and_trains_one_step(path):
    cfg = Config.fromfile(str(REPO / path))
    scope = cfg.default_scope
    assert scope in ('mmdet', 'mmseg', 'mmpretrain'), scope
    assert 'convneur_mm' in cfg.custom_imports.imports
    assert cfg.custom_imports.allow_failed_imports is False
    gated = cfg.model.backbone.type == 'convneur_mm.MemoryGated'
    # no ImageNet checkpoint here
    (cfg.model.backbone.backbone if gated else cfg.model.backbone).init_cfg = None
    if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':  # mmengine's AMP needs a GPU
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
    if scope == 'mmseg':
        cfg.model.data_preprocessor.size = (128, 128)
    model = build_task_model(cfg)
    assert isinstance(model.backbone, (ConvNeur, MemoryGated)) or any(
        isinstance(m, MemoryGate) for m in model.backbone.modules())
    if scope == 'mmdet':
        batch = det_batch(128, labels=(0, 0))
    elif scope == 'mmseg':
        batch = seg_batch(128, num_classes=cfg.model.decode_head.num_classes)
    else:
        batch = cls_batch(64)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    run_train_step(model, batch, optim_wrapper=optim_wrapper, check_backbone=True)

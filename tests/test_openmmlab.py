"""The OpenMMLab stack and ConvNeur inside it: registries, stock models, pretrained loading."""
import importlib
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.logging import HistoryBuffer
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import init_default_scope

import convneur_mm
from convneur_mm import ConvNeur
from convneur_mm.presets import arch_channels

from convneur_mm.testing import cls_batch, det_batch, run_train_step, seg_batch

REPO = Path(__file__).resolve().parents[1]


def build(scope, model_cfg):
    init_default_scope(scope)
    return importlib.import_module(f'{scope}.registry').MODELS.build(model_cfg)


STOCK = {
    'mmdet': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', lambda: det_batch(128)),
    'mmseg': ('mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py', lambda: seg_batch(128)),
    'mmpretrain': ('mmpretrain::resnet/resnet50_8xb32_in1k.py', lambda: cls_batch(64)),
}


def stock_model_cfg(scope):
    cfg = get_config(STOCK[scope][0])
    cfg.model.backbone.init_cfg = None  # no download of ImageNet weights
    if scope == 'mmseg':
        cfg.model.pretrained = None
        cfg.model.data_preprocessor.size = (128, 128)
    return cfg.model


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_stock_model_trains_a_step_on_cpu(scope):
    """The pinned stack itself works (mmcv ops included) before we build on it."""
    model = build(scope, stock_model_cfg(scope))
    run_train_step(model, STOCK[scope][1]())


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_convneur_in_stock_model_trains_a_step(scope):
    cfg = stock_model_cfg(scope)
    backbone = dict(type='ConvNeur', arch='m1', drop_path_rate=0.1)
    if scope == 'mmdet':
        backbone.update(chunk_size=4096, max_lr=1e-3)
        cfg.neck.in_channels = arch_channels('m1')
    elif scope == 'mmseg':
        cfg.decode_head.in_channels = arch_channels('m1')
        cfg.auxiliary_head.in_channels = arch_channels('m1')[2]
    else:
        backbone.update(out_indices=(3,), gap_before_final_norm=True)
        cfg.neck = None
        cfg.head.in_channels = arch_channels('m1')[3]
    cfg.backbone = backbone
    model = build(scope, cfg)
    assert isinstance(model.backbone, ConvNeur)
    run_train_step(model, STOCK[scope][1](), check_backbone=True)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_registries_in_a_fresh_process(scope, tmp_path):
    """Both type names build through each codebase's registry, from a config as users write it.

    'convneur_mm.ConvNeur' must work with no import of ours at all (mmengine imports our registry
    when it meets the scope); 'ConvNeur' needs only custom_imports.
    """
    config = tmp_path / 'cfg.py'
    config.write_text("custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)\n")
    code = textwrap.dedent(f'''
        from mmengine.registry import init_default_scope
        from {scope}.registry import MODELS
        init_default_scope('{scope}')
        scoped = MODELS.build(dict(type='convneur_mm.ConvNeur', arch='m1'))
        assert type(scoped).__module__ == 'convneur_mm.models.convneur', type(scoped)
        from mmengine.config import Config
        Config.fromfile({str(config)!r})
        plain = MODELS.build(dict(type='ConvNeur', arch='m2'))
        assert type(plain) is type(scoped) and plain.arch['widths'][0] == 48
        print('ok')
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


def test_unknown_custom_import_fails_loudly(tmp_path):
    config = tmp_path / 'cfg.py'
    config.write_text("custom_imports = dict(imports=['convneur_mmm'], allow_failed_imports=False)\n")
    with pytest.raises(ImportError, match='convneur_mmm'):
        Config.fromfile(str(config))


def test_maskrcnn_config_builds_and_trains():
    cfg = Config.fromfile(str(REPO / 'configs' / 'maskrcnn_convneur.py'))
    assert cfg.model.backbone.arch == 'm2' and cfg.model.neck.in_channels == arch_channels('m2')
    assert cfg.model.backbone.chunk_size == 4096 and cfg.model.backbone.max_lr == 1e-3
    model = build('mmdet', cfg.model)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    run_train_step(model, det_batch(160), optim_wrapper=optim_wrapper, check_backbone=True)


def test_layer_decay_constructor_scales_by_depth():
    cfg = Config.fromfile(str(REPO / 'configs' / 'maskrcnn_convneur.py'))
    model = build('mmdet', cfg.model)
    optim_cfg = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
                     paramwise_cfg=dict(layer_decay_rate=0.5))
    wrapper = build_optim_wrapper(model, optim_cfg)
    groups = wrapper.optimizer.param_groups
    lr_of = {id(p): (g['lr'], g['weight_decay']) for g in groups for p in g['params']}
    params = dict(model.named_parameters())
    n = sum(model.backbone.arch['depths']) + 2
    assert lr_of[id(params['backbone.stem.0.weight'])] == (1e-3 * 0.5 ** (n - 1), 0.05)
    assert lr_of[id(params['backbone.stages.0.blocks.0.dwconv.bias'])] == (1e-3 * 0.5 ** (n - 2), 0)
    assert lr_of[id(params['backbone.stages.2.memory.memory.norm_weight'])][1] == 0
    assert lr_of[id(params['neck.lateral_convs.0.conv.weight'])] == (1e-3, 0.05)
    assert sum(len(g['params']) for g in groups) == len(params)
    with pytest.raises(ValueError, match='unknown paramwise_cfg keys.*decay_rate'):
        build_optim_wrapper(model, dict(optim_cfg, paramwise_cfg=dict(decay_rate=0.5)))


@pytest.fixture(scope='module')
def classifier_checkpoint(tmp_path_factory):
    """An mmpretrain ConvNeur-M2 classifier saved the way mmengine's Runner saves checkpoints."""
    from mmengine.logging import MessageHub
    from mmengine.runner import save_checkpoint
    cfg = get_config('mmpretrain::resnet/resnet50_8xb32_in1k.py')
    cfg.model.backbone = dict(type='convneur_mm.ConvNeur', arch='m2', out_indices=(3,),
                              gap_before_final_norm=True)
    cfg.model.neck = None
    cfg.model.head.in_channels = arch_channels('m2')[3]
    model = build('mmpretrain', cfg.model)
    model.init_weights()
    hub = MessageHub.get_instance('convneur-test')
    hub.update_scalar('train/loss', np.float64(1.5))
    hub.update_info('iter', 3)
    path = tmp_path_factory.mktemp('ckpt') / 'classifier.pth'
    save_checkpoint(dict(meta=dict(epoch=1, iter=3, seed=np.int64(0)), state_dict=model.state_dict(),
                         message_hub=hub.state_dict()), str(path))
    return path, model


def test_mmengine_checkpoint_loads_with_weights_only(classifier_checkpoint):
    path, _ = classifier_checkpoint
    ckpt = torch.load(path, map_location='cpu', weights_only=True)  # the torch >= 2.6 default
    assert 'log_scalars' in ckpt['message_hub']


@pytest.mark.parametrize('obj, match', [
    (Config(dict(a=1)), 'Unsupported global'),           # a type outside the allowlist
    (np.ndarray.tofile, 'refused getattr.*tofile'),      # getattr on an allowed type
    (HistoryBuffer.update, 'refused getattr.*update'),   # getattr beyond the statistics
])
def test_allowlist_does_not_open_weights_only(tmp_path, obj, match):
    path = tmp_path / 'evil.pth'
    torch.save({'obj': obj}, path)
    with pytest.raises(pickle.UnpicklingError, match=match):
        torch.load(path, weights_only=True)


def test_pretrained_round_trip_classifier_to_detector(classifier_checkpoint):
    path, classifier = classifier_checkpoint
    cfg = Config.fromfile(str(REPO / 'configs' / 'maskrcnn_convneur.py'))
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')
    detector = build('mmdet', cfg.model)
    before = detector.backbone.stem[0].weight.clone()
    detector.init_weights()
    theirs = classifier.backbone.state_dict()
    ours = detector.backbone.state_dict()
    shared = [k for k in ours if k in theirs]
    assert len(shared) == len(theirs)  # every classifier backbone tensor has a home
    for k in shared:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    assert not torch.equal(before, detector.backbone.stem[0].weight)


@pytest.mark.parametrize('content, prefix, error, match', [
    (None, 'backbone.', FileNotFoundError, 'does not exist'),
    (b'not a checkpoint at all', 'backbone.', ValueError, 'cannot read pretrained checkpoint'),
    ({'state_dict': {'head.fc.weight': torch.zeros(2)}}, 'backbone.', ValueError,
     "no key .* starts with prefix='backbone.'"),
    ({'state_dict': {'backbone.foo.weight': torch.zeros(2)}}, 'backbone.', ValueError,
     'shares no tensor with ConvNeur'),
    ({'state_dict': {'stem.0.weight': torch.zeros(2)}}, None, ValueError, 'shape mismatches'),
])
def test_bad_pretrained_files_fail_clearly(tmp_path, content, prefix, error, match):
    path = tmp_path / 'weights.pth'
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    model = ConvNeur('m1', init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix=prefix))
    with pytest.raises(error, match=match):
        model.init_weights()


def test_last_checkpoint_follows_a_moved_work_directory(tmp_path):
    from convneur_mm.checkpoint import last_checkpoint
    with pytest.raises(FileNotFoundError, match='no last_checkpoint file'):
        last_checkpoint(str(tmp_path))
    (tmp_path / 'iter_8.pth').write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text('/elsewhere/run/iter_8.pth\n')
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_8.pth')
    (tmp_path / 'iter_8.pth').unlink()
    with pytest.raises(FileNotFoundError, match="names 'iter_8.pth', which is not in the work"):
        last_checkpoint(str(tmp_path))


def test_package_exports():
    assert convneur_mm.__version__
    assert convneur_mm.LayerDecayOptimWrapperConstructor.__name__ == 'LayerDecayOptimWrapperConstructor'

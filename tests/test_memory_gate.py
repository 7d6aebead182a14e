"""The memory gate as an mmcv plug-in and the MemoryGated wrapper around other backbones."""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.registry import MODELS

import convneur_mm  # noqa: F401  (registers the modules)
from convneur_mm import MemoryGate, MemoryGated

REPO = Path(__file__).resolve().parents[1]

RESNET50_PLUGINS = [dict(cfg=dict(type='convneur_mm.MemoryGate'), stages=(False, True, True, True),
                         position='after_conv3')]
# backbone config, modules to gate: each backbone family whose blocks take no plug-ins
WRAPPED = {
    'mmdet ResNet-18': (dict(type='mmdet.ResNet', depth=18),
                        ['layer1', 'layer2', 'layer3', 'layer4']),
    'mmpretrain ConvNeXt-V2-atto': (
        dict(type='mmpretrain.ConvNeXt', arch='atto', use_grn=True, layer_scale_init_value=0.,
             out_indices=(0, 1, 2, 3), gap_before_final_norm=False),
        ['stages.0', 'stages.1', 'stages.2', 'stages.3']),
    'mmdet Swin-T': (dict(type='mmdet.SwinTransformer'),
                     ['patch_embed', 'stages.0.downsample', 'stages.1.downsample',
                      'stages.2.downsample']),
    'mmdet PVTv2-b0': (dict(type='mmdet.PyramidVisionTransformerV2', embed_dims=32,
                            num_layers=[2, 2, 2, 2]),
                       ['layers.0.0', 'layers.1.0', 'layers.2.0', 'layers.3.0']),
}


def _pretrained_pair(gated_cfg, plain_cfg):
    """A gated and a plain backbone whose backbone weights are the same random 'pretrained' ones."""
    torch.manual_seed(0)
    plain = MODELS.build(plain_cfg)
    plain.init_weights()
    with torch.no_grad():  # away from mmdet's zero-initialised residual norms
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    gated = MODELS.build(gated_cfg)
    gated.init_weights()
    inner = gated.backbone if isinstance(gated, MemoryGated) else gated
    result = inner.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all('gate' in k for k in result.missing_keys)
    gated.eval()
    plain.eval()  # not `plain = plain.eval()`: mmdet's ResNet.train() returns None
    return gated, plain


def _outputs(model, x):
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def test_builds_through_mmcv_plugin_builder():
    from mmcv.cnn import build_plugin_layer
    name, layer = build_plugin_layer(dict(type='convneur_mm.MemoryGate', chunk_size=64),
                                     postfix=2, in_channels=256)
    assert name == 'memory_gate2' and isinstance(layer, MemoryGate)
    assert layer.memory.num_heads * layer.memory.head_dim == 64  # C / 4, a bottleneck
    x = torch.randn(2, 256, 9, 11)
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_resnet50_plugins_are_the_identity_at_init_then_train(scope):
    cfg = dict(type=f'{scope}.ResNet', depth=50, plugins=RESNET50_PLUGINS)
    plain_cfg = dict(type=f'{scope}.ResNet', depth=50)
    gated, plain = _pretrained_pair(cfg, plain_cfg)
    gates = [m for m in gated.modules() if isinstance(m, MemoryGate)]
    assert len(gates) == 4 + 6 + 3  # every Bottleneck of stages 2-4
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(_outputs(gated, x), _outputs(plain, x)):
            assert (a - b).abs().max() <= 1e-6
    _train_step_changes_output(gated, x)


def _train_step_changes_output(model, x):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sum(o.square().mean() for o in _outputs(model, x)).backward()
    # at the identity only the zero output projection gets a gradient: it opens the gate
    projections = [m.memory.proj.weight for m in model.modules() if isinstance(m, MemoryGate)]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in projections)
    model.eval()
    with torch.no_grad():
        before = _outputs(model, x)
    opt.step()
    with torch.no_grad():
        after = _outputs(model, x)
    assert any((a - b).abs().max() > 1e-6 for a, b in zip(after, before))


BLOCK_HOSTS = {
    'mmpretrain ConvNeXt-V2-atto': (WRAPPED['mmpretrain ConvNeXt-V2-atto'][0],
                                    ['stages.0', 'stages.1', 'stages.2', 'stages.3']),
    # a strided first block passes ungated; the gate is read from the second block's input
    'mmdet ResNet-18': WRAPPED['mmdet ResNet-18'],
    # ConvNeur's local network: the plug-in where the built-in stage memory would be
    'ConvNeur-M1 without memory': (dict(type='convneur_mm.ConvNeur', memory_placement='none',
                                        layer_scale_init_value=1.0),
                                   [f'stages.{i}.blocks' for i in range(4)]),
}


@pytest.mark.parametrize('mode, name', [('after', n) for n in WRAPPED] +
                         [('blocks', n) for n in BLOCK_HOSTS])
def test_wrapped_backbones_are_the_identity_at_init_then_train(mode, name):
    backbone, names = (WRAPPED if mode == 'after' else BLOCK_HOSTS)[name]
    gated, plain = _pretrained_pair(dict(type='convneur_mm.MemoryGated', backbone=backbone,
                                         **{mode: names}), backbone)
    assert len(gated.gates) == 4
    x = torch.randn(1, 3, 96, 128)
    # block gates round: x + 1 * (block(x) - x) is not exactly block(x)
    rtol, atol = (0, 1e-6) if mode == 'after' else (1e-5, 1e-5)
    with torch.no_grad():
        for a, b in zip(_outputs(gated, x), _outputs(plain, x)):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    _train_step_changes_output(gated, x)
    copy.deepcopy(gated)(x)  # no gate map is left on the hooks after a forward pass


def test_block_gates_scale_every_blocks_update_by_the_first_blocks_map():
    """Against a hand-written stage 1 of ConvNeXt-V2-atto: one gate map from the stage's input,
    x <- x + gate * (block(x) - x) for each block."""
    backbone, _ = WRAPPED['mmpretrain ConvNeXt-V2-atto']
    gated, plain = _pretrained_pair(dict(type='convneur_mm.MemoryGated', backbone=backbone,
                                         blocks=['stages.1']), backbone)
    gate = gated.gates['stages_1']
    with torch.no_grad():
        gate.memory.proj.weight.normal_(0, 0.5)
        gate.scale.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 96, 128)
        h = plain.stages[0](plain.downsample_layers[0](x))
        h = plain.downsample_layers[1](h)
        factor = gate.factor(h)
        assert (factor - 1).abs().mean() > 0.1  # the check below would not see a weak gate
        for block in plain.stages[1]:
            h = h + factor * (block(h) - h)
        torch.testing.assert_close(gated(x)[1], plain.norm1(h))


@pytest.mark.parametrize('gate', [dict(type='ContextBlock', ratio=1 / 4), dict(type='NonLocal2d')])
def test_wrapper_places_other_plugin_layers_too(gate):
    """GCNet's ContextBlock and NonLocal2d at the places a memory gate would take, for a fair
    comparison on backbones whose blocks take no plug-ins."""
    import mmcv.cnn  # noqa: F401  (registers mmcv's plug-in layers)
    backbone, after = WRAPPED['mmpretrain ConvNeXt-V2-atto']
    gated, plain = _pretrained_pair(dict(type='convneur_mm.MemoryGated', backbone=backbone,
                                         after=after, gate=gate), backbone)
    assert [type(g).__name__ for g in gated.gates.values()] == [gate['type']] * 4
    assert [g.in_channels for g in gated.gates.values()] == [40, 80, 160, 320]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(_outputs(gated, x), _outputs(plain, x)):
            assert (a - b).abs().max() <= 1e-6  # both start as the identity


def test_wrapper_keeps_frozen_stages_norm_eval_and_out_indices():
    model = MemoryGated(dict(type='mmdet.ResNet', depth=18, frozen_stages=1, norm_eval=True,
                             out_indices=(1, 3)), after=['layer1', 'layer2', 'layer3', 'layer4'])
    model.init_weights()
    model.train()
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.gates.parameters())
    assert not model.backbone.layer2[0].bn1.training  # norm_eval
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 512]


def test_wrapper_loads_the_wrapped_backbones_pretrained_checkpoint(tmp_path):
    torch.manual_seed(0)
    plain = MODELS.build(dict(type='mmdet.ResNet', depth=18))
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.05)
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in plain.state_dict().items()}),
               tmp_path / 'r18.pth')
    model = MemoryGated(dict(type='mmdet.ResNet', depth=18, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'r18.pth'), prefix='backbone.')),
        after=['layer2', 'layer4'])
    model.init_weights()
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    plain.eval()
    with torch.no_grad():
        for a, b in zip(model(x), plain(x)):
            assert torch.equal(a, b)


def test_deepcopy_gives_hooks_that_call_the_copied_gates():
    model = MemoryGated(dict(type='mmdet.ResNet', depth=18), after=['layer3']).eval()
    model.init_weights()
    twin = copy.deepcopy(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        twin.gates['layer3'].memory.proj.weight.normal_()
        changed, same = twin(x)[-1], model(x)[-1]
        assert not torch.equal(changed, same)
        model.gates['layer3'].memory.proj.weight.copy_(twin.gates['layer3'].memory.proj.weight)
        torch.testing.assert_close(model(x)[-1], changed)


def test_layer_depth_for_layer_decay():
    model = MemoryGated(dict(type='mmpretrain.ConvNeXt', arch='atto', out_indices=(0, 1, 2, 3),
                             gap_before_final_norm=False),
                        after=['stages.0', 'stages.3'])
    inner = model.backbone
    assert model.get_layer_depth('backbone.backbone.stages.1.0.gamma', 'backbone.') == \
        inner.get_layer_depth('stages.1.0.gamma')
    gate0 = model.get_layer_depth('backbone.gates.stages_0.scale', 'backbone.')
    assert gate0 == max(inner.get_layer_depth(f'stages.0.{n}')
                        for n, _ in inner.stages[0].named_parameters())
    assert model.get_layer_depth('neck.conv.weight', 'backbone.')[0] == gate0[1] - 1


@pytest.mark.parametrize('names, error', [
    (dict(after=['layer9']), "has no module\\(s\\) \\['layer9'\\]; its top-level modules are"),
    (dict(after='layer1'), "after must be a list of module names, got 'layer1'"),
    (dict(after=[]), 'needs module names in after or blocks'),
    (dict(blocks=['conv1']), "whose children are the blocks, but \\['conv1'\\] have none"),
    (dict(after=['layer1'], blocks=['layer1']), 'a module is named twice'),
])
def test_bad_module_names_are_refused_clearly(names, error):
    with pytest.raises(ValueError, match=error):
        MemoryGated(dict(type='mmdet.ResNet', depth=18), **names)


def test_block_gates_skip_a_strided_first_block_and_read_after_it():
    model = MemoryGated(dict(type='mmdet.ResNet', depth=18), blocks=['layer2']).eval()
    model.init_weights()
    gate = model.gates['layer2']
    assert gate.memory.reduce.in_features == 128  # layer2.1's input, not layer2.0's 64 channels
    factor = gate.factor
    calls = []
    gate.factor = lambda x: calls.append(tuple(x.shape)) or factor(x)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls == [(1, 128, 8, 8)]


def test_block_gates_refuse_groups_whose_gated_blocks_change_the_maps_shape():
    atto = dict(type='mmpretrain.ConvNeXt', arch='atto', out_indices=(0, 1),
                gap_before_final_norm=False)
    # a norm that keeps the shape, then a strided conv: the conv would be a gated 'block'
    model = MemoryGated(atto, blocks=['downsample_layers.1'])
    with pytest.raises(TypeError, match=r"block 1 of 'downsample_layers.1' maps \(1, 40, 16, 16\) "
                                        r"to \(1, 80, 8, 8\) after block 0 has read the gate"):
        model(torch.randn(1, 3, 64, 64))
    # PVTv2's stage: a patch embedding that returns tokens, then transformer blocks on tokens
    with pytest.raises(ValueError, match=r"no child of \['layers.0'\] ran in a forward pass of "
                                         r"PyramidVisionTransformerV2 keeping an NCHW map's shape"):
        MemoryGated(WRAPPED['mmdet PVTv2-b0'][0], blocks=['layers.0'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=0), 'in_channels must be a positive int, got 0'),
    (dict(in_channels=64, memory_dim=48), 'memory_dim=48 must be a multiple of head_dim=32'),
    (dict(in_channels=64, chunks_per_group=0), 'chunks_per_group must be an int >= 1'),
])
def test_bad_gate_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryGate(**kwargs)


def test_wrong_number_of_in_channels_is_refused():
    with pytest.raises(ValueError, match=r'in_channels \[64\] needs one entry per name in'):
        MemoryGated(dict(type='mmdet.ResNet', depth=18), after=['layer1', 'layer2'],
                    in_channels=[64])


def test_modules_that_give_no_map_get_a_clear_error():
    pvt = dict(type='mmdet.PyramidVisionTransformerV2', embed_dims=32, num_layers=[2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"\['layers.0.1'\] did not run in a forward pass"):
        MemoryGated(pvt, after=['layers.0.1'])  # a ModuleList, never called itself
    model = MemoryGated(pvt, after=['layers.0.1.0'])  # a block: tokens without their (H, W)
    with pytest.raises(TypeError, match=r"output of 'layers.0.1.0' is \(1, 256, 32\); a gate "):
        model(torch.randn(1, 3, 64, 64))


def _assert_onnx_matches(model, tmp_path):
    """``model`` (eval mode), with its memory gates moved off the identity so that they are
    really in the graph, exports to ONNX and gives the same maps in onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    gates = [m for m in model.modules() if isinstance(m, MemoryGate)]
    assert gates
    with torch.no_grad():
        for g in gates:
            g.memory.proj.weight.normal_()
    x = torch.randn(1, 3, 96, 128)
    path = str(tmp_path / 'gated.onnx')
    torch.onnx.export(model, (x,), path, dynamo=True, input_names=['input'])
    outs = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(
        None, {'input': x.numpy()})
    with torch.no_grad():
        ref = _outputs(model, x)
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert np.abs(o - r.numpy()).max() <= 1e-4 * np.abs(r.numpy()).max()


@pytest.mark.slow
def test_wrapped_backbone_exports_to_onnx(tmp_path):
    """Several chunks per gate (chunk 64), so the chunk loop is in the graph."""
    torch.manual_seed(0)
    model = MemoryGated(dict(type='mmdet.ResNet', depth=18),
                        after=['layer1', 'layer2', 'layer3', 'layer4'],
                        gate=dict(chunk_size=64)).eval()
    model.init_weights()
    _assert_onnx_matches(model, tmp_path)


GATED_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'configs').rglob('*.py')
                       if 'MemoryGate' in p.read_text())


@pytest.mark.slow
@pytest.mark.parametrize('path', GATED_CONFIGS)
def test_gated_backbones_of_the_configs_export_to_onnx(path, tmp_path):
    """Every shipped config with memory gates (plug-ins or the wrapper): its backbone exports to
    ONNX and runs in onnxruntime like in PyTorch."""
    from mmengine.config import Config

    from convneur_mm.engine.launch import build_task_model
    cfg = Config.fromfile(str(REPO / path))
    gated = cfg.model.backbone.type == 'convneur_mm.MemoryGated'
    (cfg.model.backbone.backbone if gated else cfg.model.backbone).init_cfg = None
    torch.manual_seed(0)
    backbone = build_task_model(cfg).backbone
    backbone.eval()  # not `backbone = backbone.eval()`: mmdet's ResNet.train() returns None
    _assert_onnx_matches(backbone, tmp_path)


def _gate_fit(gate, steps=40):
    """Loss drop when only the gates of a frozen ResNet-18 (after layer2-4) fit a random target."""
    import mmcv.cnn  # noqa: F401  (registers ContextBlock)
    torch.manual_seed(0)
    model = MemoryGated(dict(type='mmdet.ResNet', depth=18), after=['layer2', 'layer3', 'layer4'],
                        gate=gate)
    model.init_weights()
    model.eval()  # BN on running statistics: the network around the gates stays fixed
    x, target = torch.randn(2, 3, 96, 96), torch.randn(2, 512, 3, 3)
    opt = torch.optim.AdamW(model.gates.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps + 1):
        loss = (model(x)[-1] - target).square().mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0] - losses[-1]


def test_memory_gate_opens_as_fast_as_gcnet_in_finetuning():
    """The memory gate leaves the identity through a zero-initialised projection, as GCNet does;
    with a zero per-channel scale instead it fitted the same target several times slower."""
    memory, gcnet = _gate_fit({}), _gate_fit(dict(type='ContextBlock', ratio=1 / 16))
    assert gcnet > 0 and memory >= 0.5 * gcnet, (memory, gcnet)


def test_block_gates_name_a_host_that_recomputes_single_blocks():
    """ConvNeur's with_cp recomputes each block on its own in backward, after the gate map is
    gone: a clear error, not a silently wrong gradient (mmpretrain's with_cp recomputes inside
    the block, under the hooks, and works)."""
    model = MemoryGated(dict(type='convneur_mm.ConvNeur', memory_placement='none',
                             out_indices=(0,), with_cp=True), blocks=['stages.0.blocks'])
    model.init_weights()
    model.train()
    out = model(torch.randn(1, 3, 64, 64))[0]
    with pytest.raises(RuntimeError, match=r"block 2 of 'stages.0.blocks' ran without block 0, "
                                           r"which reads the gate; a host that recomputes single "
                                           r"blocks \(with_cp\) cannot take block gates"):
        out.sum().backward()
    atto = MemoryGated(dict(type='mmpretrain.ConvNeXt', arch='atto', out_indices=(0,),
                            with_cp=True, gap_before_final_norm=False), blocks=['stages.0'])
    atto.init_weights()
    atto.train()
    atto(torch.randn(1, 3, 64, 64))[0].sum().backward()
    assert atto.gates['stages_0'].memory.proj.weight.grad is not None

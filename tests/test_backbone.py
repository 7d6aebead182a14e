"""The ConvNeur backbone in pure PyTorch: shapes, gradients, options, precision, errors."""
import logging
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from convneur_mm import ConvNeur, NeuralMemory
from convneur_mm.models.convneur import GRN, ConvNeurBlock, PatchifyStem
from convneur_mm.analysis import PAPER_COMPLEXITY, ConvNeurClassifier, count_flops, count_params
from convneur_mm.testing import record_state_dtypes

STRIDES = (4, 8, 16, 32)


def build(arch='m1', **kwargs):
    torch.manual_seed(0)
    model = ConvNeur(arch, **kwargs)
    model.init_weights()
    return model


@pytest.mark.parametrize('shape', [
    (1, 3, 223, 341), (2, 3, 64, 96), (1, 3, 800, 1333), (1, 3, 224, 224), (1, 3, 1, 1),
    (1, 3, 31, 33), (3, 3, 97, 45), (1, 3, 32, 512), (1, 3, 5, 7)])
def test_output_shapes_and_strides(shape):
    model = build('m1', chunk_size=4096 if shape[-1] > 1000 else 196).eval()
    with torch.no_grad():
        outs = model(torch.randn(shape))
    assert isinstance(outs, tuple) and len(outs) == 4
    for out, stride, channels in zip(outs, STRIDES, model.arch['widths']):
        assert out.shape == (shape[0], channels, math.ceil(shape[2] / stride),
                             math.ceil(shape[3] / stride))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('arch', ['m1', 'm2', 'm3', 'm4'])
def test_presets_within_5_percent_of_paper(arch):
    model = ConvNeurClassifier(arch)
    params = count_params(model) / 1e6
    flops = count_flops(model)[0] / 1e9
    ref = PAPER_COMPLEXITY[arch]
    assert abs(params / ref['params_m'] - 1) <= 0.05, params
    assert abs(flops / ref['flops_g'] - 1) <= 0.05, flops


@pytest.mark.parametrize('arch', ['m1', 'm2', 'm3', 'm4'])
def test_memory_is_a_bottleneck_in_every_stage(arch):
    model = ConvNeur(arch)
    for stage, width in zip(model.stages, model.arch['widths']):
        assert stage.memory.qkv.in_features < width
    if arch == 'm3':  # the paper's M3 width, where the stages are wide enough for it
        assert [s.memory.qkv.in_features for s in model.stages[2:]] == [128, 128]


def test_arch_dict_takes_one_memory_width_or_one_per_stage():
    spec = dict(widths=(32, 64, 96, 128), depths=(1, 1, 1, 1), head_dim=16, chunk_size=64,
                max_lr=1.0)
    widths = [s.memory.qkv.in_features for s in ConvNeur(dict(spec, memory_dim=16)).stages]
    assert widths == [16] * 4
    widths = [s.memory.qkv.in_features
              for s in ConvNeur(dict(spec, memory_dim=(16, 32, 32, 48))).stages]
    assert widths == [16, 32, 32, 48]
    with pytest.raises(ValueError, match=r'memory_dim needs 4 entries.*\(16, 32\)'):
        ConvNeur(dict(spec, memory_dim=(16, 32)))


def test_checkpoint_of_the_old_one_width_preset_is_reported(tmp_path):
    # M2 before per-stage memory widths: C_m 64 in every stage, depths (3, 3, 4, 3)
    old = ConvNeur(dict(widths=(48, 96, 192, 384), depths=(3, 3, 4, 3), memory_dim=64,
                        head_dim=32, chunk_size=196, max_lr=1.0))
    torch.save({'state_dict': old.state_dict()}, tmp_path / 'old.pth')
    model = ConvNeur('m2', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'old.pth'),
                                         prefix=None))
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect()
    MMLogger.get_current_instance().addHandler(handler)
    try:
        model.init_weights()
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    text = '\n'.join(messages)
    assert 'shape mismatches' in text and 'stages.0.memory.reduce.weight' in text
    assert 'missing keys' in text and 'stages.1.blocks.3.' in text


@pytest.mark.parametrize('read_mode', ['prev', 'final'])
@pytest.mark.parametrize('memory_placement', ['stage', 'block', 'none'])
@pytest.mark.parametrize('fusion', ['gate', 'add'])
def test_gradients_reach_every_parameter(read_mode, memory_placement, fusion):
    # chunk_size 4 gives every stage at least two chunks at 64x96, so even in 'prev' mode every
    # gate is used (see test_prev_mode_single_chunk_gates_unused for the one-chunk case).
    model = build('m1', read_mode=read_mode, memory_placement=memory_placement, chunk_size=4,
                  layer_scale_init_value=1.0, fusion=fusion)
    outs = model(torch.randn(2, 3, 64, 96))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    n_memories = sum(isinstance(m, NeuralMemory) for m in model.modules())
    assert n_memories == {'stage': 4, 'block': sum(model.arch['depths']), 'none': 0}[
        memory_placement]


def test_prev_mode_single_chunk_gates_unused():
    """Documented behaviour: with 'prev', a stage held in one chunk never reads a write."""
    model = build('m1', read_mode='prev', out_indices=(3,))
    model(torch.randn(1, 3, 32, 32))[0].sum().backward()  # stage 1: 64 tokens < 196
    unused = {n for n, p in model.named_parameters() if p.grad is None}
    assert unused == {f'stages.{i}.memory.gates.{w}' for i in range(4) for w in ('weight', 'bias')}


def test_read_modes_differ_and_memory_changes_output():
    x = torch.randn(1, 3, 96, 96)
    outs = {}
    for mode in ('prev', 'final'):
        model = build('m1', read_mode=mode, layer_scale_init_value=1.0, chunk_size=16).eval()
        with torch.no_grad():
            outs[mode] = model(x)[-1]
    assert not torch.allclose(outs['prev'], outs['final'], atol=1e-5)


def test_fusion_gate_multiplies_and_add_adds():
    """One block, its global map fixed: 'gate' scales the local branch, 'add' shifts it."""
    x, g = torch.randn(1, 40, 8, 8), torch.randn(1, 40, 8, 8)
    for fusion in ('gate', 'add'):
        model = build('m1', fusion=fusion, layer_scale_init_value=0.5).eval()
        block = model.stages[0].blocks[0]
        with torch.no_grad():
            local = block(x, torch.ones_like(g) if fusion == 'gate' else torch.zeros_like(g)) - x
            context = torch.sigmoid(g) if fusion == 'gate' else g
            expected = local * context if fusion == 'gate' else local + 0.5 * g
            torch.testing.assert_close(block(x, context) - x, expected)


def test_zero_init_memory_starts_from_the_local_only_network():
    """G = 0 everywhere: the network is the local-only one with its layer scales halved (the
    constant gate sigmoid(0)), and the zero projection still gets a gradient."""
    torch.manual_seed(0)
    model = ConvNeur('m1', zero_init_memory=True)
    model.init_weights()
    local = ConvNeur('m1', memory_placement='none')
    assert not local.load_state_dict(model.state_dict(), strict=False).missing_keys
    with torch.no_grad():
        for block in local.modules():
            if isinstance(block, ConvNeurBlock):
                block.gamma.mul_(0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), local.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    sum(o.sum() for o in model.train()(x)).backward()
    assert all(m.proj.weight.grad.abs().sum() > 0
               for m in model.modules() if isinstance(m, NeuralMemory))


def test_gate_bias_init_sets_where_the_gate_starts():
    """With a zero projection the gate is exactly sigmoid(gate_bias_init) everywhere; with the
    default projection only the bias changes, so every weight matches the default model's."""
    torch.manual_seed(0)
    model = ConvNeur('m1', zero_init_memory=True, gate_bias_init=2.0)
    model.init_weights()
    x = model.stem(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        for stage in model.stages:
            gate = torch.sigmoid(stage.memory(stage.downsample(x)))
            torch.testing.assert_close(gate, torch.full_like(gate, 1 / (1 + math.exp(-2))))
            x = stage(x)
    torch.manual_seed(0)
    default = ConvNeur('m1')
    default.init_weights()
    torch.manual_seed(0)
    shifted = ConvNeur('m1', gate_bias_init=2.0)
    shifted.init_weights()
    for (name, a), b in zip(default.state_dict().items(), shifted.state_dict().values()):
        if name.endswith('memory.proj.bias'):
            assert torch.all(b == 2.0), name
        else:
            assert torch.equal(a, b), name


def test_gate_scale_is_a_reparametrisation_of_the_layer_scale():
    """gate_scale * sigmoid(G) * gamma is the default model with gamma multiplied by gate_scale:
    the same functions, reached by a different training path."""
    torch.manual_seed(0)
    default = ConvNeur('m1', layer_scale_init_value=0.3)
    default.init_weights()
    scaled = ConvNeur('m1', layer_scale_init_value=0.3, gate_scale=2.0)
    scaled.load_state_dict(default.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = [o.clone() for o in default(x)]
        assert not torch.allclose(scaled(x)[-1], before[-1], atol=1e-3)  # the scale acts
        for name, p in default.named_parameters():
            if name.endswith('.gamma'):
                p.mul_(2)
        for a, b in zip(default(x), scaled(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size', [(64, 64), (61, 45)])
def test_patchify_stem_keeps_the_output_sizes(size):
    """ConvNeXt's 4x4 stem gives every stage the default stem's ceil-mode sizes."""
    x = torch.randn(1, 3, *size)
    default, patchify = build('m1'), build('m1', stem='patchify')
    assert isinstance(patchify.stem, PatchifyStem)
    assert [o.shape for o in patchify(x)] == [o.shape for o in default(x)]


def test_grn_starts_as_the_identity_and_normalises_over_positions():
    torch.manual_seed(0)
    grn = GRN(8)
    x = torch.randn(2, 5, 7, 8)
    assert torch.equal(grn(x), x)
    with torch.no_grad():
        grn.gamma.fill_(1.0)
    # each channel's response is its L2 norm over positions relative to the channels' mean
    norms = x.square().sum((1, 2)).sqrt()
    expected = x + x * (norms / norms.mean(-1, keepdim=True)).view(2, 1, 1, 8)
    torch.testing.assert_close(grn(x), expected)
    # the local branch's GRN is a global operation: the other image of the batch is unaffected
    y = x.clone()
    y[0, 0, 0] += 10
    assert torch.equal(grn(y)[1], grn(x)[1]) and not torch.allclose(grn(y)[0, 4], grn(x)[0, 4])
    model = build('m1', use_grn=True)
    model.init_weights()
    assert all(isinstance(b.grn, GRN) for s in model.stages for b in s.blocks)
    plain = build('m1')
    plain.load_state_dict(model.state_dict(), strict=False)  # GRN at init: the same network
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), plain(x)):
            torch.testing.assert_close(a, b)


def test_out_indices_and_unbuilt_stages():
    model = build('m1', out_indices=(1, 2))
    assert len(model.stages) == 3 and model.out_channels == (80, 160)
    assert not hasattr(model, 'norm0') and not hasattr(model, 'norm3')
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [80, 160]
    assert build('m1', out_indices=-1).out_indices == (3,)


def test_gap_before_final_norm():
    model = build('m2', out_indices=(3,), gap_before_final_norm=True)
    (out,) = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 384)


@pytest.mark.parametrize('frozen_stages', [0, 2, 4])
def test_frozen_stages(frozen_stages):
    model = build('m1', frozen_stages=frozen_stages)
    model.train()
    frozen = [model.stem] + list(model.stages[:frozen_stages])
    trainable = list(model.stages[frozen_stages:])
    for m in frozen:
        assert all(not p.requires_grad for p in m.parameters())
        assert all(not sub.training for sub in m.modules())
    for m in trainable:
        assert all(p.requires_grad for p in m.parameters())
        assert all(sub.training for sub in m.modules())
    loss = sum(o.sum() for o in model(torch.randn(1, 3, 64, 64)))
    if trainable:
        loss.backward()
        assert all(p.grad is None for m in frozen for p in m.parameters())
    else:
        assert not loss.requires_grad


def test_norm_eval_keeps_batchnorm_in_eval():
    # ConvNeur itself has only LayerNorms; norm_eval must still hold for a BatchNorm a user
    # swaps in (e.g. a converted checkpoint), as it does in mmdet's ResNet.
    for norm_eval in (True, False):
        model = build('m1', norm_eval=norm_eval)
        model.stem[1] = nn.BatchNorm2d(20)
        model.train()
        assert model.stem[1].training is not norm_eval
        assert model.stages[0].training


def test_train_returns_self():
    model = build('m1')
    assert model.train() is model and model.eval() is model


@pytest.mark.parametrize('memory_placement', ['stage', 'block'])
def test_with_cp_same_outputs_and_gradients(memory_placement):
    x = torch.randn(2, 3, 64, 64)
    results = []
    for with_cp in (False, True):
        model = build('m1', with_cp=with_cp, memory_placement=memory_placement,
                      layer_scale_init_value=1.0, drop_path_rate=0.0)
        model.train()
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-7)


def test_drop_path_is_random_in_train_and_off_in_eval():
    model = build('m1', drop_path_rate=0.5, layer_scale_init_value=1.0)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x)[-1], model(x)[-1])
    model.eval()
    torch.testing.assert_close(model(x)[-1], model(x)[-1])


def test_bf16_autocast_forward_is_finite_and_close():
    model = build('m1', layer_scale_init_value=1.0, chunk_size=64).eval()
    x = torch.randn(2, 3, 96, 128)
    dtypes = []
    model.stages[1].blocks[0].pwconv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    assert dtypes == [torch.float32, torch.bfloat16]  # autocast really ran the matmuls in bf16
    for a, b in zip(ref, low):
        assert torch.isfinite(b).all()
        rel = (a - b.float()).norm() / a.norm()
        assert rel < 0.05, rel


def test_cuda_benchmark_layout_and_half_weights_on_cpu():
    """What tools/benchmark.py does on a GPU (channels_last model and input, half precision),
    on the CPU: the same outputs, and the memory's state still computed in fp32."""
    model = build('m1', layer_scale_init_value=1.0, chunk_size=64).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        last = model(x.to(memory_format=torch.channels_last))
        for a, b in zip(ref, last):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        seen = record_state_dtypes(model.stages[0].memory)
        half = model.half()(x.half().to(memory_format=torch.channels_last))
    assert seen and set(seen) == {torch.float32}
    for a, b in zip(ref, half):
        assert b.dtype == torch.float16 and torch.isfinite(b).all()
        assert (a - b.float()).norm() / a.norm() < 0.05


def test_memory_state_stays_fp32_under_autocast():
    mem = NeuralMemory(16, 32, head_dim=16, chunk_size=8)
    seen = record_state_dtypes(mem)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mem(torch.randn(1, 16, 6, 6))
    assert seen and set(seen) == {torch.float32}


def test_memory_trains_under_autocast_like_fp32():
    """Mixed precision training (AmpOptimWrapper) through the hand-written backwards: bf16 pieces
    meet the fp32 state, and every parameter's gradient stays within 5% of fp32's."""
    torch.manual_seed(0)
    mem = NeuralMemory(16, 64, head_dim=32, chunk_size=8)  # two heads, 36 tokens: 5 chunks
    x = torch.randn(2, 16, 6, 6)

    def grads(amp):
        mem.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            y = mem(x)
        y.float().square().mean().backward()
        return {n: p.grad.clone() for n, p in mem.named_parameters()}
    ref, low = grads(False), grads(True)
    for name, g in low.items():
        assert torch.isfinite(g).all() and g.dtype == torch.float32, name
        assert (g - ref[name]).norm() < 0.05 * ref[name].norm(), name


def test_memory_type_mlp_builds_and_trains():
    model = build('m1', memory_type='mlp')
    model(torch.randn(1, 3, 64, 64))[-1].sum().backward()
    assert model.stages[0].memory.memory.initial[1].grad is not None


def test_get_layer_depth():
    model = build('m2')  # depths (3, 4, 4, 3): 14 blocks + stem + head = 16 layers
    assert model.get_layer_depth('backbone.stem.0.weight', 'backbone.') == (0, 16)
    assert model.get_layer_depth('backbone.stages.0.blocks.0.dwconv.weight', 'backbone.') == (1, 16)
    assert model.get_layer_depth('backbone.stages.1.downsample.conv.weight', 'backbone.') == (4, 16)
    assert model.get_layer_depth('backbone.stages.1.memory.qkv.weight', 'backbone.') == (4, 16)
    assert model.get_layer_depth('backbone.stages.3.blocks.2.gamma', 'backbone.') == (14, 16)
    assert model.get_layer_depth('backbone.norm3.weight', 'backbone.') == (15, 16)
    assert model.get_layer_depth('neck.lateral_convs.0.conv.weight', 'backbone.') == (15, 16)
    depths = [model.get_layer_depth(n)[0] for n, _ in model.named_parameters()]
    assert min(depths) == 0 and max(depths) == 15


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='m9'), ValueError, r"arch='m9'.*'m1', 'm2', 'm3', 'm4'"),
    (dict(arch=dict(widths=(1, 2))), ValueError, 'missing keys'),
    (dict(out_indices=(4,)), ValueError, r'out_indices entry 4.*-4\.\.3'),
    (dict(out_indices=()), TypeError, 'out_indices'),
    (dict(frozen_stages=5), ValueError, r'frozen_stages.*\[-1, 4\].*5'),
    (dict(frozen_stages=-2), ValueError, 'frozen_stages'),
    (dict(chunk_size=0), ValueError, 'chunk_size must be a positive int, got 0'),
    (dict(chunk_size=-3), ValueError, 'chunk_size'),
    (dict(read_mode='next'), ValueError, r"read_mode='next'.*'prev', 'final'"),
    (dict(memory_placement='layer'), ValueError, r"memory_placement='layer'.*'stage'"),
    (dict(memory_type='deep'), ValueError, r"memory_type='deep'.*'linear', 'mlp'"),
    (dict(fusion='mul'), ValueError, r"fusion='mul'.*'gate', 'add'"),
    (dict(max_lr=0), ValueError, 'max_lr'),
    (dict(chunks_per_group=0), ValueError, r'chunks_per_group must be an int >= 1.*or None.*got 0'),
    (dict(grad_clip=-1.0), ValueError, r'grad_clip must be None \(no clip\) or > 0, got -1.0'),
    (dict(zero_init_memory=1), ValueError, 'zero_init_memory must be True or False, got 1'),
    (dict(gate_bias_init='2'), ValueError, "gate_bias_init must be a finite number, got '2'"),
    (dict(gate_bias_init=float('nan')), ValueError, 'gate_bias_init must be a finite number'),
    (dict(gate_bias_init=2.0, fusion='add'), ValueError, r"needs fusion='gate', got fusion='add'"),
    (dict(gate_scale=0), ValueError, r'gate_scale must be a finite number > 0, got 0'),
    (dict(gate_scale=True), ValueError, r'gate_scale must be a finite number > 0, got True'),
    (dict(gate_scale=2.0, fusion='add'), ValueError, r"gate_scale=2.0 scales.*fusion='add'"),
    (dict(stem='resnet'), ValueError, r"stem='resnet' is not supported.*'conv', 'patchify'"),
    (dict(use_grn='yes'), ValueError, r"use_grn must be True or False, got 'yes'"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    kwargs.setdefault('arch', 'm1')
    with pytest.raises(error, match=match):
        ConvNeur(**kwargs)


@pytest.mark.parametrize('x, error, match', [
    (torch.randn(1, 1, 32, 32), ValueError, r'in_channels=3.*1 channels'),
    (torch.randn(3, 32, 32), ValueError, r'\(B, C, H, W\).*\(3, 32, 32\)'),
    (torch.randn(1, 3, 0, 32), ValueError, 'at least 1x1'),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, 'floating-point.*uint8'),
])
def test_bad_inputs_are_named(x, error, match):
    with pytest.raises(error, match=match):
        build('m1')(x)


def test_import_needs_no_openmmlab_task_package():
    code = ('import sys, convneur_mm; '
            'bad = [m for m in ("mmcv", "mmdet", "mmseg", "mmpretrain") if m in sys.modules]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)

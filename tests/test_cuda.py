"""The CUDA path: the memory and the backbone on a GPU give what they give on the CPU.

These run only where torch sees a CUDA device (they are reported as skipped elsewhere); the CPU
tests cover the GPU benchmark's layout and precision (channels_last, fp16) on the CPU.
"""
import pytest
import torch

from convneur_mm import ConvNeur, MemoryGate, NeuralMemory
from convneur_mm.testing import record_state_dtypes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

MEMORIES = {
    'one group': dict(),
    'sequential, prev reads': dict(chunks_per_group=1, read_mode='prev'),
    'groups of 2, clip, mlp': dict(chunks_per_group=2, grad_clip=1.0, memory_type='mlp'),
    'centred keys, global query': dict(center_keys=True, global_query=True),
}


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 matmuls would differ from the CPU by ~1e-3: compare fp32 with fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def forward_backward(module, x):
    """Output and the gradients of the input and of every parameter, on the CPU."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    sum((o * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).sum()
        for o in outs).backward()
    # copies: moving the module to the GPU afterwards moves its .grad tensors in place
    grads = {n: p.grad.to('cpu', copy=True) for n, p in module.named_parameters()
             if p.grad is not None}
    return [o.detach().to('cpu', copy=True) for o in outs], x.grad.to('cpu', copy=True), grads


def assert_same(a, b, rtol=1e-4, atol=1e-5):
    outs_a, dx_a, grads_a = a
    outs_b, dx_b, grads_b = b
    for oa, ob in zip(outs_a, outs_b):
        torch.testing.assert_close(oa, ob, rtol=rtol, atol=atol)
    torch.testing.assert_close(dx_a, dx_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f'{name}: {m}')


# name: (module builder, input shape, rtol). 99 tokens in chunks of 20 for the memories: four
# full chunks and a padded one. The whole network sums over more terms, hence its looser rtol.
CASES = {
    **{f'memory, {name}': (lambda kw=kw: NeuralMemory(48, 32, head_dim=16, chunk_size=20, **kw),
                           (2, 48, 9, 11), 1e-9) for name, kw in MEMORIES.items()},
    'memory gate': (lambda: MemoryGate(40, memory_dim=32, head_dim=16, chunk_size=30),
                    (2, 40, 8, 12), 1e-9),
    'M1, training': (lambda: ConvNeur('m1', layer_scale_init_value=1.0, chunk_size=64),
                     (2, 3, 96, 128), 1e-8),
}


@pytest.mark.parametrize('name', list(CASES))
def test_cuda_matches_cpu_in_float64(name):
    build, shape, rtol = CASES[name]
    torch.manual_seed(0)
    module = build().double().train()
    x = torch.randn(*shape, dtype=torch.double)
    assert_same(forward_backward(module, x), forward_backward(module.cuda(), x.cuda()),
                rtol=rtol, atol=1e-10)


def test_compiled_memory_on_cuda_matches_eager():
    torch.manual_seed(0)
    mem = NeuralMemory(48, 32, head_dim=16, chunk_size=20).cuda()
    x = torch.randn(2, 48, 9, 11, device='cuda')
    eager = forward_backward(mem, x)
    mem.compile = True
    compiled = forward_backward(mem, x)
    assert mem._compiled not in (None, False)  # it really compiled, no silent eager fallback
    assert_same(eager, compiled, rtol=1e-3, atol=1e-4)  # fused kernels sum in another order


def test_fp16_autocast_channels_last_on_cuda():
    """What tools/benchmark.py runs on a GPU: finite, close to fp32, memory state in fp32."""
    torch.manual_seed(0)
    model = ConvNeur('m1', layer_scale_init_value=1.0, chunk_size=64).cuda().eval()
    x = torch.randn(2, 3, 96, 128, device='cuda')
    with torch.inference_mode():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        seen = record_state_dtypes(model.stages[0].memory)
        with torch.autocast('cuda', torch.float16):
            low = model(x.to(memory_format=torch.channels_last))
    assert seen and set(seen) == {torch.float32}
    for a, b in zip(ref, low):
        assert torch.isfinite(b).all()
        assert (a - b.float()).norm() / a.norm() < 0.05

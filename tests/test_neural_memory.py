"""The closed-form memory against a slow reference that takes its inner gradients with autograd."""
import pytest
import torch
import torch.nn.functional as F

from convneur_mm.models.neural_memory import NeuralMemory, soft_clip


def reference_apply(mem, weights, z, gamma, beta):
    """f_W(z) written plainly; autograd differentiates it."""
    if mem.memory.memory_type == 'linear':
        pre = z @ weights[0]
    else:
        pre = F.gelu(z @ weights[0]) @ weights[1]
    return z + F.layer_norm(pre, pre.shape[-1:], eps=1e-5) * gamma + beta


def reference_scan(mem, q, k, v, logits, B):
    """Chunk loop without padding, inner gradients by torch.autograd.grad(create_graph=True)."""
    G, N, d = q.shape
    nh, L = mem.num_heads, mem.chunk_size
    gamma = mem.memory.norm_weight.to(q.dtype).repeat(B, 1).unsqueeze(1)
    beta = mem.memory.norm_bias.to(q.dtype).repeat(B, 1).unsqueeze(1)
    weights = [w.to(q.dtype).repeat(B, 1, 1) for w in mem.memory.initial]
    momentum = [torch.zeros_like(w) for w in weights]
    to_g = lambda t: t.permute(0, 2, 1).reshape(G, -1)  # (B, n, nh) -> (G, n)
    reads = []
    starts = list(range(0, N, L))
    for t, s in enumerate(starts):
        sl = slice(s, min(s + L, N))
        if mem.read_mode == 'prev':
            reads.append(reference_apply(mem, weights, q[:, sl], gamma, beta))
            if t == len(starts) - 1:
                break
        lr = mem.max_lr / L * torch.sigmoid(to_g(logits[:, sl, :nh]))
        err = reference_apply(mem, weights, k[:, sl], gamma, beta) - v[:, sl]
        inner = (lr * err.square().sum(-1)).sum()
        grads = torch.autograd.grad(inner, weights, create_graph=True)
        chunk_mean = logits[:, sl, nh:].mean(1)  # (B, 2 nh)
        eta = torch.sigmoid(chunk_mean[:, :nh]).reshape(G, 1, 1)
        alpha = torch.sigmoid(chunk_mean[:, nh:]).reshape(G, 1, 1)
        for i, g in enumerate(grads):
            norm = torch.sqrt(g.square().sum((-2, -1), keepdim=True) + 1e-12)
            clipped = g * mem.grad_clip * torch.tanh(norm / mem.grad_clip) / norm
            momentum[i] = eta * momentum[i] - clipped
            weights[i] = (1 - alpha) * weights[i] + momentum[i]
    if mem.read_mode == 'prev':
        return torch.cat(reads, 1)
    return reference_apply(mem, weights, q, gamma, beta)


@pytest.mark.parametrize('memory_type', ['linear', 'mlp'])
@pytest.mark.parametrize('read_mode', ['prev', 'final'])
@pytest.mark.parametrize('N', [23, 24])  # a padded last chunk, and an exact multiple
def test_closed_form_matches_autograd_reference(memory_type, read_mode, N):
    torch.manual_seed(0)
    B, C, d, nh, L = 2, 16, 8, 2, 6
    mem = NeuralMemory(C, nh * d, head_dim=d, chunk_size=L, max_lr=3.0, read_mode=read_mode,
                       memory_type=memory_type, grad_clip=0.5).double()
    with torch.no_grad():  # move the gates and memory away from their symmetric start
        mem.gates.weight.normal_(0, 0.5)
        for w in mem.memory.initial:
            w.normal_(0, 0.3)
        mem.memory.norm_weight.uniform_(0.5, 1.5)
        mem.memory.norm_bias.normal_(0, 0.1)
    q = F.normalize(torch.randn(B * nh, N, d, dtype=torch.float64), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(B * nh, N, d, dtype=torch.float64), dim=-1).requires_grad_()
    v = torch.randn(B * nh, N, d, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(B, N, 3 * nh, dtype=torch.float64, requires_grad=True)
    outer = torch.randn(B * nh, N, d, dtype=torch.float64)
    inputs = [q, k, v, logits] + list(mem.memory.parameters())

    y = mem._scan(q, k, v, logits, B)
    y_ref = reference_scan(mem, q, k, v, logits, B)
    assert y.shape == y_ref.shape == (B * nh, N, d)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)

    grads = torch.autograd.grad((y * outer).sum(), inputs, allow_unused=True)
    grads_ref = torch.autograd.grad((y_ref * outer).sum(), inputs, allow_unused=True)
    for g, g_ref in zip(grads, grads_ref):
        assert (g is None) == (g_ref is None)
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)
    # the write really changes what is read (otherwise the comparison above proves little)
    assert grads[3] is not None and grads[3].abs().max() > 1e-6


def test_memory_module_gradcheck():
    """The whole branch (projections, scan, output) against finite differences, in float64."""
    torch.manual_seed(0)
    mem = NeuralMemory(4, 8, head_dim=4, chunk_size=3, memory_type='mlp').double()
    x = torch.randn(1, 4, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mem, (x,), eps=1e-6, atol=1e-6)


def test_soft_clip_bounds_and_zero():
    g = torch.randn(3, 4, 5) * torch.tensor([1e-4, 1.0, 1e4]).view(3, 1, 1)
    out = soft_clip(g, 2.0)
    norms = out.flatten(1).norm(dim=1)
    assert torch.all(norms < 2.0)
    torch.testing.assert_close(out[0], g[0], rtol=1e-6, atol=0)  # identity for small gradients
    zero = torch.zeros(1, 2, 2, requires_grad=True)
    soft_clip(zero, 1.0).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_input_shorter_than_a_chunk_is_written_not_dropped():
    torch.manual_seed(0)
    mem = NeuralMemory(8, 8, head_dim=4, chunk_size=16, read_mode='final').double()
    nh, d, N = 2, 4, 3
    q, k, v = (torch.randn(nh, N, d, dtype=torch.float64) for _ in range(3))
    logits = torch.randn(1, N, 3 * nh, dtype=torch.float64)
    y = mem._scan(q, k, v, logits, 1)
    y_initial = mem.memory(mem.memory.initial_state(1, torch.float64), q,
                           mem.memory.ln_params(1, torch.float64))
    assert torch.isfinite(y).all()
    assert (y - y_initial).abs().max() > 1e-4

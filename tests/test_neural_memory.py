"""The closed-form memory against a slow reference that takes its inner gradients with autograd."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from convneur_mm.models.neural_memory import (NeuralMemory, _UnitQKV, _WriteRead, soft_clip,
                                              unit_qkv, write_read)


def reference_apply(mem, weights, z, gamma, beta):
    """f_W(z) written plainly; autograd differentiates it."""
    if mem.memory.memory_type == 'linear':
        pre = z @ weights[0]
    else:
        pre = F.gelu(z @ weights[0]) @ weights[1]
    return z + F.layer_norm(pre, pre.shape[-1:], eps=1e-5) * gamma + beta


def reference_scan(mem, q, k, v, logits, B):
    """Chunk loop without padding, inner gradients by torch.autograd.grad(create_graph=True).

    Written from the update rule in its plainest form: chunk t's loss is
    sum_i max_lr * sigmoid(.) * mean_d (f(k_i) - v_i)^2, its gradient is taken at the state that
    starts t's group, and momentum and forgetting are applied one chunk at a time.
    """
    G, N, d = q.shape
    nh, L = mem.num_heads, mem.chunk_size
    gamma = mem.memory.norm_weight.to(q.dtype).repeat(B, 1).unsqueeze(1)
    beta = mem.memory.norm_bias.to(q.dtype).repeat(B, 1).unsqueeze(1)
    weights = [mem.memory.initial_norms[i] * w / w.norm(dim=(-2, -1), keepdim=True)
               for i, w in enumerate(mem.memory.initial)]
    weights = [w.to(q.dtype).repeat(B, 1, 1) for w in weights]
    momentum = [torch.zeros_like(w) for w in weights]
    to_g = lambda t: t.permute(0, 2, 1).reshape(G, -1)  # (B, n, nh) -> (G, n)
    reads = []
    starts = list(range(0, N, L))
    group = mem.chunks_per_group or len(starts)
    for t, s in enumerate(starts):
        if t % group == 0:
            at = list(weights)  # the state the gradients of this group are taken at
        sl = slice(s, min(s + L, N))
        if mem.read_mode == 'prev':
            reads.append(reference_apply(mem, weights, q[:, sl], gamma, beta))
            if t == len(starts) - 1:
                break
        lr = mem.max_lr * torch.sigmoid(to_g(logits[:, sl, :nh]))
        err = reference_apply(mem, at, k[:, sl], gamma, beta) - v[:, sl]
        inner = (lr * err.square().mean(-1)).sum()
        grads = torch.autograd.grad(inner, at, create_graph=True)
        chunk_mean = logits[:, sl, nh:].mean(1)  # (B, 2 nh)
        eta = torch.sigmoid(chunk_mean[:, :nh]).reshape(G, 1, 1)
        alpha = torch.sigmoid(chunk_mean[:, nh:]).reshape(G, 1, 1)
        for i, g in enumerate(grads):
            if mem.grad_clip is not None:
                norm = torch.sqrt(g.square().sum((-2, -1), keepdim=True) + 1e-12)
                g = g * mem.grad_clip * torch.tanh(norm / mem.grad_clip) / norm
            momentum[i] = eta * momentum[i] - g
            weights[i] = (1 - alpha) * weights[i] + momentum[i]
    if mem.read_mode == 'prev':
        return torch.cat(reads, 1)
    return reference_apply(mem, weights, q, gamma, beta)


@pytest.mark.parametrize('memory_type', ['linear', 'mlp'])
@pytest.mark.parametrize('read_mode', ['prev', 'final'])
@pytest.mark.parametrize('N', [5, 23, 24])  # shorter than a chunk, a padded last chunk, a multiple
@pytest.mark.parametrize('chunks_per_group,grad_clip', [(1, None), (2, None), (None, None),
                                                        (1, 0.5), (2, 0.5)])
def test_closed_form_matches_autograd_reference(memory_type, read_mode, N, chunks_per_group,
                                                grad_clip):
    torch.manual_seed(0)
    B, C, d, nh, L = 2, 16, 8, 2, 6
    mem = NeuralMemory(C, nh * d, head_dim=d, chunk_size=L, max_lr=3.0, read_mode=read_mode,
                       memory_type=memory_type, chunks_per_group=chunks_per_group,
                       grad_clip=grad_clip).double()
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
    # the write really changes what is read (otherwise the comparison above proves little),
    # except in 'prev' mode with one chunk, which reads the initial memory only
    if not (read_mode == 'prev' and N <= L):
        assert grads[3] is not None and grads[3].abs().max() > 1e-6


def _write_read_inputs(G=3, N=7, pad=3, d=5):
    """float64 inputs of write_read, with a padded last chunk: zero keys, values and steps."""
    torch.manual_seed(0)
    n = N + pad
    q = F.normalize(torch.randn(G, N, d, dtype=torch.float64), dim=-1)
    k = F.pad(F.normalize(torch.randn(G, N, d, dtype=torch.float64), dim=-1), (0, 0, 0, pad))
    v = F.pad(torch.randn(G, N, d, dtype=torch.float64), (0, 0, 0, pad))
    step = F.pad(torch.rand(G, N, 1, dtype=torch.float64), (0, 0, 0, pad))
    keep = torch.rand(G, 1, 1, dtype=torch.float64)
    weight = 0.3 * torch.randn(G, d, d, dtype=torch.float64)
    gamma = torch.rand(G, 1, d, dtype=torch.float64) + 0.5
    beta = 0.1 * torch.randn(G, 1, d, dtype=torch.float64)
    return [t.requires_grad_() for t in (q, k, v, step, keep, weight, gamma, beta)] + [-2 * 3.0 / d]


def test_hand_written_backward_matches_autograd():
    """The memory's default write and read: its backward against autograd's and finite differences."""
    inputs = _write_read_inputs()
    tensors = inputs[:-1]
    outer = torch.randn(3, 7, 5, dtype=torch.float64)
    y = _WriteRead.apply(*inputs)
    y_ref = write_read(*inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((y * outer).sum(), tensors)
    grads_ref = torch.autograd.grad((y_ref * outer).sum(), tensors)
    for name, g, g_ref in zip(('q', 'k', 'v', 'step', 'keep', 'weight', 'gamma', 'beta'), grads,
                              grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12, msg=name)
        assert g.abs().max() > 1e-6, name  # every input matters, so each comparison can fail
    assert torch.autograd.gradcheck(_WriteRead.apply, inputs, eps=1e-6, atol=1e-7)


class _Passes(TorchDispatchMode):
    """Counts the passes that write tensors of ``size`` elements: a kernel writing a tensor of k
    times that size counts k (views write nothing; smaller tensors are not counted)."""

    def __init__(self, size):
        super().__init__()
        self.size, self.count = size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not func.is_view:
            self.count += sum(o.numel() // self.size for o in outs if torch.is_tensor(o))
        return out


def test_hand_written_backward_makes_fewer_passes():
    """Counts the backward's kernels that write a (G, n, d)-sized tensor: the memory's cost.

    Measured: 25 against autograd's 37 for the same forward.
    """
    counts = {}
    for name, fn in (('autograd', write_read), ('hand-written', _WriteRead.apply)):
        inputs = _write_read_inputs(G=2, N=256, pad=0, d=8)
        y = fn(*inputs)
        with _Passes(y.numel()) as passes:
            y.backward(torch.ones_like(y))
        counts[name] = passes.count
    print(counts)
    assert counts['hand-written'] <= 26 and counts['hand-written'] < counts['autograd']


@pytest.mark.parametrize('num_heads', [1, 2])
def test_unit_qkv_backward_matches_autograd(num_heads):
    torch.manual_seed(0)
    d = 4
    x = torch.randn(2, 7, 3 * num_heads * d, dtype=torch.float64)
    x[0, 3, :d] = 0  # a query of norm 0, where the norm's clamp holds
    x.requires_grad_()
    outs, refs = _UnitQKV.apply(x, num_heads, d), unit_qkv(x, num_heads, d)
    outer = [torch.randn_like(o) for o in outs]
    for o, r in zip(outs, refs):
        assert o.shape == (2, num_heads, 7, d)
        torch.testing.assert_close(o, r, rtol=0, atol=0)
    grad, = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, outer)), x)
    grad_ref, = torch.autograd.grad(sum((o * w).sum() for o, w in zip(refs, outer)), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    assert grad[0, 3, :d].abs().min() > 1e6  # the clamped query's gradient, 1e12 times its own
    x = torch.randn(1, 5, 3 * num_heads * d, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _UnitQKV.apply(t, num_heads, d), (x,))


def test_unit_qkv_backward_makes_fewer_passes():
    """Counts the backward's passes over q-sized tensors. Measured: 13 against autograd's 20."""
    counts = {}
    for name, fn in (('autograd', unit_qkv), ('hand-written', _UnitQKV.apply)):
        x = torch.randn(2, 256, 3 * 2 * 8, requires_grad=True)
        outs = fn(x, 2, 8)
        grads = [torch.ones_like(o) for o in outs]
        with _Passes(outs[0].numel()) as passes:
            torch.autograd.backward(outs, grads)
        counts[name] = passes.count
    print(counts)
    assert counts['hand-written'] <= 13 and counts['hand-written'] < counts['autograd']


def test_training_takes_the_hand_written_backward_and_inference_does_not():
    mem = NeuralMemory(8, 8, head_dim=4, chunk_size=5)
    x = torch.randn(2, 8, 4, 3, requires_grad=True)  # 12 tokens: 3 chunks, the last one padded

    def graph_names(y):
        seen, stack = {}, [y.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is not None and id(fn) not in seen:
                seen[id(fn)] = type(fn).__name__
                stack += [f for f, _ in fn.next_functions]
        return set(seen.values())
    assert {'_WriteReadBackward', '_UnitQKVBackward'} <= graph_names(mem(x))
    for option in (dict(memory_type='mlp'), dict(chunks_per_group=1), dict(read_mode='prev'),
                   dict(global_query=True), dict(grad_clip=1.0)):
        other = NeuralMemory(8, 8, head_dim=4, chunk_size=5, **option)
        assert '_WriteReadBackward' not in graph_names(other(x)), option
    with torch.no_grad():
        assert mem(x).grad_fn is None


@pytest.mark.parametrize('memory_type', ['linear', 'mlp'])  # linear: the hand-written backward
def test_memory_module_gradcheck(memory_type):
    """The whole branch (projections, scan, output) against finite differences, in float64."""
    torch.manual_seed(0)
    mem = NeuralMemory(4, 8, head_dim=4, chunk_size=3, memory_type=memory_type).double()
    x = torch.randn(1, 4, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mem, (x,), eps=1e-6, atol=1e-6)


def test_soft_clip_bounds_and_zero():
    g = (torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
         * torch.tensor([1e-4, 1.0, 1e4]).view(3, 1, 1))
    out = soft_clip(g, 2.0)
    norms = out.flatten(1).norm(dim=1)
    # for a huge gradient tanh is exactly 1 in fp32: the bound is reached (to rounding), not passed
    assert torch.all(norms <= 2.0 * (1 + 1e-6)) and norms[1] < 2.0
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


def test_momentum_forgetting_closed_form_over_many_runs():
    """The run-by-run closed form against the plain recurrence, past several runs of chunks and
    with gates near 0 and 1 (where products of many factors underflow)."""
    from convneur_mm.models.neural_memory import _RUN, momentum_forgetting
    torch.manual_seed(0)
    G, P = 3, 2 * _RUN + 5
    u = torch.randn(G, P, 4, 5, dtype=torch.float64)
    logit_eta = torch.randn(G, P, dtype=torch.float64) * 4
    logit_keep = torch.randn(G, P, dtype=torch.float64) * 4
    logit_eta[0] = -40  # eta ~ 4e-18: a chain of products would underflow to 0 / 0
    W0, S0 = torch.randn(G, 4, 5, dtype=torch.float64), torch.randn(G, 4, 5, dtype=torch.float64)
    states, S = momentum_forgetting(u, F.logsigmoid(logit_eta), F.logsigmoid(logit_keep), W0, S0)
    W, S_ref, expected = W0, S0, []
    for t in range(P):
        S_ref = torch.sigmoid(logit_eta[:, t]).view(G, 1, 1) * S_ref + u[:, t]
        W = torch.sigmoid(logit_keep[:, t]).view(G, 1, 1) * W + S_ref
        expected.append(W)
    torch.testing.assert_close(states, torch.stack(expected, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-10)


def test_group_end_weights_over_many_runs():
    """The end state's weights of W_0, S_0 and every update against the plain recurrence, past
    several runs of chunks and with gates near 0 and 1."""
    from convneur_mm.models.neural_memory import _RUN, group_end_weights
    torch.manual_seed(0)
    G, P = 3, 2 * _RUN + 5
    logit_eta = torch.randn(G, P, dtype=torch.float64) * 4
    logit_keep = torch.randn(G, P, dtype=torch.float64) * 4
    logit_eta[0] = -40  # eta ~ 4e-18
    logit_keep[1] = 40  # keep ~ 1 - 4e-18
    a, c, e = group_end_weights(F.logsigmoid(logit_eta), F.logsigmoid(logit_keep))
    # the recurrence run on basis vectors: u_0 = S_0, u_1..u_P, and W_0 as the last one
    W = torch.zeros(G, P + 2, dtype=torch.float64)
    S = torch.zeros(G, P + 2, dtype=torch.float64)
    W[:, -1], S[:, 0] = 1, 1
    for t in range(P):
        S = torch.sigmoid(logit_eta[:, t:t + 1]) * S
        S[:, t + 1] += 1
        W = torch.sigmoid(logit_keep[:, t:t + 1]) * W + S
    torch.testing.assert_close(c, W[:, :-1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, W[:, -1:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e, S[:, :-1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('memory_type', ['linear', 'mlp'])
@pytest.mark.parametrize('chunks_per_group', [40, None])
def test_long_groups_match_autograd_reference(memory_type, chunks_per_group):
    """70 chunks: groups that span several runs of the closed form, and (40) two groups."""
    torch.manual_seed(0)
    B, C, d, nh, L, N = 1, 8, 4, 2, 3, 209
    mem = NeuralMemory(C, nh * d, head_dim=d, chunk_size=L, max_lr=0.5, memory_type=memory_type,
                       chunks_per_group=chunks_per_group).double()
    with torch.no_grad():
        mem.gates.weight.normal_(0, 0.5)
    q, k = (F.normalize(torch.randn(B * nh, N, d, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(B * nh, N, d, dtype=torch.float64)
    logits = torch.randn(B, N, 3 * nh, dtype=torch.float64, requires_grad=True)
    y = mem._scan(q, k, v, logits, B)
    y_ref = reference_scan(mem, q, k, v, logits, B)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
    g, g_ref = (torch.autograd.grad(out.square().sum(), logits)[0] for out in (y, y_ref))
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize('read_mode', ['prev', 'final'])
def test_single_chunk_is_the_same_under_every_grouping(read_mode):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7)
    outs = []
    for group in (1, 3, None):
        torch.manual_seed(1)
        mem = NeuralMemory(16, 16, head_dim=8, chunk_size=64, read_mode=read_mode,
                           chunks_per_group=group)
        outs.append(mem(x))
    for y in outs[1:]:
        torch.testing.assert_close(y, outs[0], rtol=0, atol=0)


@pytest.mark.parametrize('bad', [0, -1, 1.5, '2', True])
def test_bad_chunks_per_group_is_refused(bad):
    with pytest.raises(ValueError, match='chunks_per_group must be an int >= 1'):
        NeuralMemory(16, 16, head_dim=8, chunks_per_group=bad)


def test_centred_keys_write_only_what_differs_from_the_image_mean():
    torch.manual_seed(0)
    mem = NeuralMemory(16, 16, head_dim=8, chunk_size=8, center_keys=True).double()
    with torch.no_grad():
        mem.gates.bias[2 * mem.num_heads:] = -40.0  # no forgetting: only writes change W
    uniform = torch.randn(1, 16, 1, 1, dtype=torch.float64).expand(1, 16, 4, 6).contiguous()

    def no_write(x):
        mem.write = False
        try:
            return mem(x)
        finally:
            mem.write = True
    # an image of one repeated token: every centred key is 0, so the write changes nothing
    torch.testing.assert_close(mem(uniform), no_write(uniform), rtol=0, atol=1e-10)
    # one token that differs is written, and its write reaches every position
    odd = uniform.clone()
    odd[..., 2, 3] += torch.randn(16, dtype=torch.float64)
    change = (mem(odd) - no_write(odd)).abs().amax(1)
    assert change.min() > 1e-6
    # without centring the repeated token writes too
    mem.center_keys = False
    assert (mem(uniform) - no_write(uniform)).abs().max() > 1e-4


def test_global_query_adds_one_read_to_every_position():
    torch.manual_seed(0)
    mem = NeuralMemory(16, 16, head_dim=8, chunk_size=8, global_query=True).double()
    assert mem.global_query.shape == (16,)  # flat, like a bias: no weight decay by ndim rules
    grabbed = {'reads': []}
    plain_read, plain_scan = mem.memory.forward, mem._scan

    def read_spy(*args):
        grabbed['reads'].append(plain_read(*args))
        return grabbed['reads'][-1]

    def scan_spy(*args):
        grabbed['scan'] = plain_scan(*args)
        return grabbed['scan']

    mem.memory.forward, mem._scan = read_spy, scan_spy
    mem(torch.randn(2, 16, 4, 6, dtype=torch.float64)).sum().backward()
    tokens, global_read = grabbed['reads']
    assert global_read.shape == (2 * mem.num_heads, 1, 8)
    # every position gets its own read plus the same image-level read of the learned query
    torch.testing.assert_close(grabbed['scan'] - tokens, global_read.expand_as(tokens))
    assert mem.global_query.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="global_query=True .* needs read_mode='final'"):
        NeuralMemory(16, 16, head_dim=8, read_mode='prev', global_query=True)


@pytest.mark.parametrize('name', ['center_keys', 'global_query', 'compile'])
@pytest.mark.parametrize('bad', ['no', 1, None])
def test_bool_switches_refuse_other_values(name, bad):
    with pytest.raises(ValueError, match=f'{name} must be True or False, got {bad!r}'):
        NeuralMemory(16, 16, head_dim=8, **{name: bad})


@pytest.mark.parametrize('side, bound', [(7, 80), (56, 110)])  # one chunk of 196; 16 chunks
def test_memory_dispatches_few_operations(side, bound):
    """At 224^2 a memory costs its dispatches, not its arithmetic: a bound on their number.

    Measured: 76 and 104 operations (85 and 114 before write_read, 134 and 539 before the
    loop-free write of 2026-12, whose default was the sequential form).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    mem = NeuralMemory(280, 32, chunk_size=196).eval()
    x = torch.randn(1, 280, side, side)
    with torch.inference_mode(), Count():
        mem(x)
    print(f'{side}x{side} map, {-(-side * side // 196)} chunks: {Count.calls} operations')
    assert Count.calls <= bound


"""The global branch of ConvNeur: a per-image neural memory written chunk by chunk (Titans-style).

Notation used in the shapes below: B images, C input channels, H x W positions, N = H * W tokens,
``nh`` heads of size ``d`` (C_m = nh * d), G = B * nh independent memories, L the chunk length,
T = ceil(N / L) chunks and P the chunks of a group.

Inner loop, per memory g and chunk t (all in fp32, whatever the autocast state)::

    loss_t(W) = sum_i theta_i * mean_d (f_W(k_i) - v_i)^2     (i over the tokens of chunk t,
                                                               theta_i = max_lr * sigmoid(.))
    S_t = eta_t * S_{t-1} - grad_W loss_t(W_ref(t))
    W_t = (1 - alpha_t) * W_{t-1} + S_t

with the linear memory ``f_W(z) = z + LN(z W)`` or the MLP memory ``f_W(z) = z + LN(gelu(z W1) W2)``.
This is the step of ``titans_pytorch.NeuralMemory``: a per-token loss averaged over the head
dimension and summed over the chunk, so ``max_lr`` and ``chunk_size`` mean what they mean there.

W_ref(t) is the state that starts t's group (Titans' mini-batch gradient descent): chunks are
taken ``chunks_per_group`` at a time, every chunk of a group takes its gradient at the group's start
state, and within a group momentum and forgetting are linear recurrences computed in closed form.
One chunk per group is the fully sequential form, one group per stage the fully parallel one.

The inner gradients are written out in closed form (no ``autograd.grad`` in forward), so the whole
loop is an ordinary differentiable graph: it works with checkpointing, tracing, ONNX and compile,
and the outer optimiser trains the projections, the gates and the learned initial weights through it.
"""
import math
import types
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

READ_MODES = ('prev', 'final')
MEMORY_TYPES = ('linear', 'mlp')
# Longest run of chunks whose momentum/forgetting recurrence is solved as one dense matrix: the
# closed form costs O(P^2) per run, so longer groups are solved run by run to stay linear in N.
_RUN = 32


def _logit(p):
    return math.log(p / (1 - p))


def _as(t, dtype):
    """``t`` in ``dtype``, without dispatching a cast when it is already there."""
    return t if t.dtype == dtype else t.to(dtype)


def rms_inverse(x, eps):
    """1 / sqrt(mean(x^2) + eps) over the last dim, (..., d) -> (..., 1).

    Through a vector norm: one pass over x and no x-sized temporary (x.square().mean() makes one;
    torch.var over a short last dim is 10-20x slower on CPU).
    """
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.rsqrt(n.square().mul_(1 / x.shape[-1]).add_(eps))


def soft_clip(g, max_norm, eps=1e-12):
    """Scale each matrix of ``g`` (..., a, b) to norm ``max_norm * tanh(norm / max_norm)``.

    Smooth (unlike a hard clip) and an identity for small gradients; the ``eps`` inside the square
    root keeps the backward finite when a gradient is exactly zero (a fully masked chunk).
    """
    ratio = torch.sqrt(g.square().sum(dim=(-2, -1), keepdim=True) + eps) * (1 / max_norm)
    return g * (torch.tanh(ratio) / ratio)


class FastWeights(nn.Module):
    """The memory model f_W of every head, with its learned initial weights and closed-form gradient.

    Args:
        num_heads (int): nh.
        head_dim (int): d, the width a head reads and writes.
        memory_type (str): ``'linear'`` (W: d x d) or ``'mlp'`` (W1: d x rd, W2: rd x d).
        mlp_ratio (int): r, hidden expansion of the MLP memory.

    The fast weights of G = B * nh memories are a list of tensors of shape (G, fan_in, fan_out).

    The learned initial memory has a fixed Frobenius norm per head, that of TTT's N(0, 0.02^2)
    initialisation: only its direction is learned. The read goes through a LayerNorm, which makes
    the linear memory blind to the scale of W, while the closed-form step shrinks as 1 / ||W||
    (relative to W, as 1 / ||W||^2): with a free norm, training can grow the initial memory until
    every write is negligible (measured: after the detection demo's training the global map
    changed by 0.002-2.3% with the write switched off). Fixing the norm removes that degenerate
    direction and nothing the linear read can express.
    """

    def __init__(self, num_heads, head_dim, memory_type='linear', mlp_ratio=2):
        super().__init__()
        if memory_type not in MEMORY_TYPES:
            raise ValueError(f'memory_type={memory_type!r} is not supported; expected one of {MEMORY_TYPES}')
        self.memory_type = memory_type
        self.num_heads = num_heads
        if memory_type == 'linear':
            shapes = [(head_dim, head_dim)]
        else:
            shapes = [(head_dim, mlp_ratio * head_dim), (mlp_ratio * head_dim, head_dim)]
        # Direction of the learned initial memory, shared by all images and reset for every image.
        self.initial = nn.ParameterList(nn.Parameter(torch.randn(num_heads, *s)) for s in shapes)
        self.initial_norms = [0.02 * math.sqrt(a * b) for a, b in shapes]
        self.norm_weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def initial_state(self, batch_size, dtype):
        """Fast weights of a fresh memory per image: list of (B * nh, fan_in, fan_out) tensors."""
        out = []
        for w, norm in zip(self.initial, self.initial_norms):
            w = _as(w, dtype)
            w = w * norm / torch.linalg.vector_norm(w, dim=(-2, -1), keepdim=True).clamp_min(1e-12)
            out.append(w if batch_size == 1 else w.repeat(batch_size, 1, 1))
        return out

    def ln_params(self, batch_size, dtype):
        """LayerNorm weight and bias of every memory: two (B * nh, 1, d) tensors."""
        # row g = b * nh + h takes head h's parameters
        params = (_as(self.norm_weight, dtype), _as(self.norm_bias, dtype))
        return tuple((p if batch_size == 1 else p.repeat(batch_size, 1)).unsqueeze(1)
                     for p in params)

    def normalized(self, weights, z):
        """LN(z W) (or LN(gelu(z W1) W2)) without the affine part, for z (G', n, d).

        ``weights`` are (G', fan_in, fan_out). Returns the normalised (G', n, d) map and a cache
        for :meth:`chunk_grads` and :meth:`summed_grads`.
        """
        # The LayerNorm's centring is linear, so it is applied to the last (d x d or rd x d)
        # matrix instead of to every token. So the updates need no centring of their own: what
        # they add along the all-ones output direction is invisible to every read.
        last = weights[-1] - weights[-1].mean(-1, keepdim=True)
        if self.memory_type == 'linear':
            hidden = act = None
            centred = torch.bmm(z, last)
        else:
            hidden = torch.bmm(z, weights[0])
            act = F.gelu(hidden)
            centred = torch.bmm(act, last)
        # rstd is kept because the closed-form gradient needs it
        rstd = rms_inverse(centred, 1e-5)
        normed = centred * rstd
        return normed, (z, hidden, act, normed, rstd, last)

    def forward(self, weights, z, ln):
        """Read the memory: f_W(z) = z + LN(...) for z (G, n, d); ``ln`` = (gamma, beta)."""
        if self.memory_type == 'linear':
            pre = torch.bmm(z, weights[0])
        else:
            pre = torch.bmm(F.gelu(torch.bmm(z, weights[0])), weights[1])
        gamma, beta = ln
        if gamma.shape[0] == 1:  # one head and one image: the LayerNorm's own affine part
            return z + F.layer_norm(pre, pre.shape[-1:], gamma.view(-1), beta.view(-1), 1e-5)
        return torch.addcmul(z + beta, F.layer_norm(pre, pre.shape[-1:], eps=1e-5), gamma)

    def chunk_grads(self, cache, d_normed, lr, num_chunks):
        """Closed-form gradient of every chunk's inner loss, all taken at the weights of ``cache``.

        Args:
            cache: from :meth:`normalized`, for the written tokens z (G, P * L, d).
            d_normed: (G, P * L, d) gradient of the loss with respect to the normalised map,
                without the per-token step size.
            lr: (G, P * L, 1) per-token step size.
            num_chunks: P; the tokens are P consecutive chunks of equal length.
        Returns:
            list of (G, P, fan_in, fan_out) gradients, in the order of the weights.
        """
        G = d_normed.shape[0]

        def per_chunk(left, step, right):  # sum over each chunk's tokens of step * left^T right
            left = left * step
            a, b = left.shape[-1], right.shape[-1]
            out = torch.bmm(left.reshape(G * num_chunks, -1, a).transpose(1, 2),
                            right.reshape(G * num_chunks, -1, b))
            return out.view(G, num_chunks, a, b)
        return self._grads(cache, d_normed, lr, per_chunk)

    def summed_grads(self, cache, d_normed, lr):
        """R weighted sums over all tokens of their gradients, taken at the weights of ``cache``.

        ``lr`` (G, n, R) holds, per token, its step size in each of the R sums (a chunk's
        gradient is the sum over its tokens, so any combination of chunk gradients with scalar
        weights is one such sum). Returns a list of (G, R, fan_in, fan_out) tensors.
        """
        G, n, R = lr.shape

        def weighted(left, step, right):
            a = left.shape[-1]
            if R == 1:
                left = left * step
            else:  # (G, n, R, a) -> (G, n, R * a): R sums in one product
                left = (left.unsqueeze(2) * step.unsqueeze(-1)).reshape(G, n, R * a)
            return torch.bmm(left.transpose(1, 2), right).view(G, R, a, -1)
        return self._grads(cache, d_normed, lr, weighted)

    def _grads(self, cache, d_normed, lr, reduce):
        """The gradients of the weights as ``reduce(left, step, right)`` sums of outer products
        over tokens, ``step`` being a per-token scale of the (G, n, a) left factor."""
        z, hidden, act, normed, rstd, last = cache
        g = d_normed
        # Back through the normalisation: the standard LayerNorm backward
        # d_pre = rstd * centre(g - normed * mean(g * normed)). Everything after it is linear per
        # token, so rstd and the step size scale the (smaller) left factors of the final
        # products; the centring (over the output dimension) is left out (see normalized).
        h = torch.addcmul(g, normed, (g * normed).mean(-1, keepdim=True), value=-1)
        if self.memory_type == 'linear':
            return [reduce(z, lr * rstd, h)]
        # d_act = d_pre W2^T = rstd * h (centre(W2))^T, centring being symmetric
        d_act = rstd * torch.bmm(h, last.transpose(1, 2))
        # derivative of the exact (erf) GELU: Phi(x) + x * phi(x)
        cdf = 0.5 * (1 + torch.erf(hidden * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * hidden.square()) * (1 / math.sqrt(2 * math.pi))
        d_hidden = d_act * (cdf + hidden * pdf)
        return [reduce(z, lr, d_hidden), reduce(act, lr * rstd, h)]


def _segment_weights(log_a):
    """exp(sum_{j < i <= t} log_a_i) for j <= t, else 0: (..., P) -> (..., P, P) indexed [t, j]."""
    cs = torch.cumsum(log_a, -1)
    seg = cs.unsqueeze(-1) - cs.unsqueeze(-2)
    P = log_a.shape[-1]
    future = torch.ones(P, P, dtype=torch.bool, device=log_a.device).triu(1)
    return torch.exp(seg.masked_fill(future, float('-inf')))


def momentum_forgetting(updates, log_eta, log_keep, weight, momentum):
    """Solve S_t = eta_t S_{t-1} + u_t, W_t = keep_t W_{t-1} + S_t for t = 1..P in closed form.

    Args:
        updates: (G, P, a, b) the u_t (negated, possibly clipped, gradients).
        log_eta, log_keep: (G, P) logs of the momentum and of 1 - forgetting.
        weight, momentum: (G, a, b) W_0 and S_0.
    Returns:
        (states, momentum): states (G, P, a, b) holds W_1..W_P; momentum is S_P (G, a, b).

    With E(j, t) = prod_{j<i<=t} eta_i and K(m, t) = prod_{m<i<=t} keep_i:
    S_t = E(0, t) S_0 + sum_j E(j, t) u_j and W_t = K(0, t) W_0 + sum_m K(m, t) S_m, so every state
    is a weighted sum of W_0, S_0 and the updates. Runs of at most ``_RUN`` chunks are solved as one
    matrix product each (cost O(P * _RUN) instead of O(P^2)); the weights come from segment sums of
    logs, which stay finite however small eta or keep get.
    """
    G, P = log_eta.shape
    states = []
    for s in range(0, P, _RUN):
        u = updates[:, s:s + _RUN]
        le = F.pad(log_eta[:, s:s + _RUN], (1, 0))  # index 0 stands for the run's start state
        lk = F.pad(log_keep[:, s:s + _RUN], (1, 0))
        E, K = _segment_weights(le), _segment_weights(lk)  # (G, p+1, p+1)
        # weight of S_0 and of each u_j in W_t: sum_m K(m, t) E(j, m), m = 1..t
        coef = torch.bmm(K[:, 1:, 1:], E[:, 1:, :])  # (G, p, p+1): [t, j], j = 0 is S_0
        flat = u.flatten(2)
        W = (torch.bmm(coef[:, :, 1:], flat) + coef[:, :, :1] * momentum.flatten(1).unsqueeze(1)
             + K[:, 1:, :1] * weight.flatten(1).unsqueeze(1))
        S_end = torch.bmm(E[:, -1:, 1:], flat).squeeze(1) + E[:, -1, :1] * momentum.flatten(1)
        W = W.view_as(u)
        states.append(W)
        weight, momentum = W[:, -1], S_end.view_as(momentum)
    return torch.cat(states, 1) if len(states) > 1 else states[0], momentum


def _suffix_sum(x):
    """sum_{i > j} x_i for j = 0..P, x (..., P) holding x_1..x_P: (..., P) -> (..., P + 1)."""
    return x.sum(-1, keepdim=True) - F.pad(x.cumsum(-1), (1, 0))


def group_end_weights(log_eta, log_keep, momentum=True):
    """Weights of a group's start state and updates in its end state.

    For S_t = eta_t S_{t-1} + u_t, W_t = keep_t W_{t-1} + S_t (t = 1..P):
    ``W_P = a W_0 + sum_{j=0..P} c_j u_j`` and ``S_P = sum_{j=0..P} e_j u_j``, with u_0 = S_0.

    Args:
        log_eta, log_keep: (G, P) logs of the momentum and of 1 - forgetting.
        momentum: whether e is needed (it is not after the last group).
    Returns:
        a (G, 1), c (G, P + 1), e (G, P + 1) or None.

    With E(j, m) = prod_{j<i<=m} eta_i and K(m, P) = prod_{m<i<=P} keep_i:
    e_j = E(j, P) and c_j = sum_{m >= max(j, 1)} E(j, m) K(m, P). Every factor is at most 1, so
    nothing overflows. c is summed run by run from the end (``_RUN`` chunks as one small matrix
    each, the runs after it through one carried number), which keeps the cost linear in P.
    """
    G, P = log_eta.shape
    keep_to_end = _suffix_sum(log_keep).exp()  # K(m, P), m = 0..P
    c, carry = [], None
    for s in range(((P - 1) // _RUN) * _RUN, -1, -_RUN):
        le = F.pad(log_eta[:, s:s + _RUN], (1, 0))  # local index 0 stands for chunk s
        E = _segment_weights(le)  # (G, r + 1, r + 1): [m, j] = E(j, m), local indices
        # c_j = sum_{m in run} E(j, m) K(m, P) + E(j, t) * carry, t the run's last chunk and
        # carry = sum_{m > t} E(t, m) K(m, P): the S_t coefficient the later runs give
        local = torch.bmm(keep_to_end[:, None, s + 1:s + 1 + _RUN], E[:, 1:, :]).squeeze(1)
        if carry is not None:
            local = torch.addcmul(local, carry, E[:, -1, :])
        c.append(local[:, 1:])
        carry = local[:, :1]  # index 0: chunk s, whose S is what the run before it hands on
    c = torch.cat([carry] + c[::-1], 1)
    return keep_to_end[:, :1], c, _suffix_sum(log_eta).exp() if momentum else None


def write_read(q, k, v, step, keep, weight, gamma, beta, coef, saved=None):
    """One group of chunks written into a linear memory, then read by every query: the default path.

    Args:
        q: (G, N, d) unit queries; k, v: (G, n, d) keys and values (the module passes n = N;
            extra tokens, such as padding with step 0, are written and not read).
        step: (G, n, 1) each token's share of the end state: its step size times its chunk's
            weight from :func:`group_end_weights`.
        keep: (G, 1, 1) the weight of the start state W_0 in the end state.
        weight: (G, d, d) W_0. gamma, beta: (G, 1, d) the read's LayerNorm affine.
        coef: -2 max_lr / d, which turns the mean over d of the squared error into -grad.
        saved: a list that receives what :class:`_WriteRead`'s backward needs, or None.
    Returns:
        (G, N, d) reads ``q + gamma * LN(q W) + beta`` of the end state
        ``W = keep W_0 + sum_i step_i rstd_i k_i^T h_i`` (h: the gradient with respect to the
        pre-normalisation map of the token's inner loss, negated; see FastWeights._grads).
    """
    last = weight - weight.mean(-1, keepdim=True)  # the LayerNorm's centring, on W (normalized)
    centred = torch.bmm(k, last)
    rstd = rms_inverse(centred, 1e-5)
    normed = centred * rstd
    err = torch.addcmul(k - v + beta, normed, gamma)  # f(k) - v
    g = err * (coef * gamma)
    m = (g * normed).mean(-1, keepdim=True)
    h = torch.addcmul(g, normed, m, value=-1)
    W = torch.baddbmm(weight * keep, (k * (step * rstd)).transpose(1, 2), h)
    pre = torch.bmm(q, W)
    if saved is None:
        read = F.layer_norm(pre, pre.shape[-1:], eps=1e-5)
    else:
        read, mean_read, rstd_read = torch.native_layer_norm(pre, pre.shape[-1:], None, None, 1e-5)
        saved += [q, k, step, keep, weight, last, gamma, rstd, normed, err, m, h, W, pre, read,
                  mean_read, rstd_read]
    return torch.addcmul(q + beta, read, gamma)


class _WriteRead(torch.autograd.Function):
    """:func:`write_read` with a hand-written backward, used whenever the memory trains eagerly.

    The memory's time goes into passes over (G, n, d) tensors. Autograd's backward of
    :func:`write_read` makes 37 of them, with the divisions and masked fills of the normalisations'
    backwards; this one makes 25, the read's LayerNorm backward as one fused kernel
    (docs/benchmarks.md has the timings). It is differentiable once: a second-order gradient
    through the memory raises.
    """

    @staticmethod
    def forward(ctx, q, k, v, step, keep, weight, gamma, beta, coef):
        saved = []
        y = write_read(q, k, v, step, keep, weight, gamma, beta, coef, saved)
        ctx.save_for_backward(*saved)
        ctx.coef = coef
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (q, k, step, keep, weight, last, gamma, rstd, normed, err, m, h, W, pre, read, mean_read,
         rstd_read) = ctx.saved_tensors
        coef, d = ctx.coef, q.shape[-1]
        # y = q + beta + gamma * LN(q W)
        dgamma = (dy * read).sum(1, keepdim=True)
        dbeta = dy.sum(1, keepdim=True)
        dpre = torch.ops.aten.native_layer_norm_backward(
            dy * gamma, pre, [d], mean_read, rstd_read, None, None, [True, False, False])[0]
        dq = torch.baddbmm(dy, dpre, W.transpose(1, 2))
        dW = torch.bmm(q.transpose(1, 2), dpre)
        # W = keep W_0 + (k s)^T h, s = step * rstd
        dkeep = (dW * weight).sum((-2, -1), keepdim=True)
        s = step * rstd
        dks = torch.bmm(h, dW.transpose(1, 2))
        dh = torch.bmm(k * s, dW)
        ds = (k * dks).sum(-1, keepdim=True)
        dk = dks * s
        # h = g - normed * m, m = mean_d(g * normed), g = coef * gamma * err
        g = err * (coef * gamma)
        dm = (dh * normed).sum(-1, keepdim=True).neg_()
        dg = torch.addcmul(dh, normed, dm, value=1 / d)
        dnormed = torch.addcmul(dh * -m, g, dm, value=1 / d)
        derr = dg * (coef * gamma)
        dgamma += coef * (dg * err).sum(1, keepdim=True) + (derr * normed).sum(1, keepdim=True)
        # err = k - v + beta + gamma * normed
        dk += derr
        dbeta += derr.sum(1, keepdim=True)
        dnormed.addcmul_(derr, gamma)
        # normed = (k last) * rstd, rstd = (mean_d (k last)^2 + eps)^(-1/2)
        drstd = ds * step + (dnormed * normed).sum(-1, keepdim=True) / rstd
        dcentred = rstd * torch.addcmul(dnormed, normed, drstd * rstd, value=-1 / d)
        dk.baddbmm_(dcentred, last.transpose(1, 2))
        dlast = torch.bmm(k.transpose(1, 2), dcentred)
        dweight = torch.addcmul(dlast - dlast.mean(-1, keepdim=True), dW, keep)
        return dq, dk, -derr, ds * rstd, dkeep, dweight, dgamma, dbeta, None


def unit_qkv(x, num_heads, head_dim, saved=None):
    """The memory's queries, keys and values from the ``qkv`` projection: silu, q and k at unit norm.

    Args:
        x: (B, N, 3 * nh * d) pre-activations, laid out as (3, nh, d) per token.
        saved: a list that receives what :class:`_UnitQKV`'s backward needs, or None.
    Returns:
        q, k, v: (B, nh, N, d) views (not copies) of two (B, N, ., nh, d) tensors.
    """
    B, N, _ = x.shape
    # split, not sliced: the backward of a slice fills a zero tensor of the whole map per piece
    qk, v = F.silu(x).view(B, N, 3, num_heads, head_dim).split((2, 1), dim=2)
    norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True)
    qk = qk * norm.clamp_min(1e-12).reciprocal()  # F.normalize's formula, q and k in one pass
    if saved is not None:
        saved += [x, qk, norm]
    q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v.squeeze(2).transpose(1, 2)


class _UnitQKV(torch.autograd.Function):
    """:func:`unit_qkv` with a hand-written backward, used whenever the memory trains eagerly.

    Autograd's backward of the unit normalisation divides, masks and adds over the whole map, and
    the split's and the unbind's backwards concatenate and stack the pieces; this one writes the
    three gradients straight into the pieces of one buffer: a third fewer token-sized passes
    (docs/benchmarks.md has the timings). Differentiable once.
    """

    @staticmethod
    def forward(ctx, x, num_heads, head_dim):
        saved = []
        q, k, v = unit_qkv(x, num_heads, head_dim, saved)
        ctx.save_for_backward(*saved)
        return q, k, v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dq, dk, dv):
        x, qk, norm = ctx.saved_tensors
        grad = torch.empty(qk.shape[:2] + (3,) + qk.shape[3:], dtype=x.dtype, device=x.device)
        gq, gk, gv = grad.permute(2, 0, 3, 1, 4).unbind(0)
        gv.copy_(dv)
        # z = u / max(|u|, 1e-12): du = (dz - z <dz, z>) / |u|, or dz / 1e-12 where the clamp holds
        pieces = (t.permute(2, 0, 3, 1, 4).unbind(0) for t in (qk, norm))
        for dz, z, n, out in zip((dq, dk), *pieces, (gq, gk)):
            dot = torch.linalg.vecdot(dz, z).unsqueeze(-1).masked_fill_(n < 1e-12, 0)
            torch.mul(torch.addcmul(dz, z, dot, value=-1), n.clamp_min(1e-12).reciprocal(), out=out)
        return torch.ops.aten.silu_backward(grad.view(x.shape), x), None, None


class NeuralMemory(nn.Module):
    """Global context map of a stage: write the tokens into a per-image memory, read them back.

    Args:
        in_channels (int): C.
        memory_dim (int): C_m, width of the tokens written into the memory (C_m < C).
        head_dim (int): d; C_m must be a multiple of it.
        chunk_size (int): L, tokens written per memory update.
        max_lr (float): upper bound of the per-token inner step size theta (1 for
            classification, 1e-3 for detection in the paper). Each chunk's step is the sum of
            its tokens' theta-weighted gradients, as in titans_pytorch.
        read_mode (str): ``'prev'``: each chunk reads the memory as it was before its own write
            (the paper's formula); ``'final'``: every chunk is written, then every token reads the
            final memory.
        memory_type (str): ``'linear'`` or ``'mlp'``, see :class:`FastWeights`.
        chunks_per_group (int | None): chunks whose gradients are taken at the same state (the
            one that starts their group). None (default): one group for the whole input
            (titans_pytorch's default ``batch_size=None``); 1: fully sequential.
        grad_clip (float | None): if set, m of a soft norm clip applied to every chunk's
            gradient. None (default, as in titans_pytorch): no clip.
        center_keys (bool): subtract the image's mean key from every (unit) key, so that a
            token writes in proportion to how much it differs from the image's average token.
            Not in Titans.
        global_query (bool): every position also reads the final memory with one learned query
            per head, and adds that read to its own: an image-level answer that is the same at
            every position, so a fact written anywhere reaches all of them alike. Without the
            write it is a constant. Needs ``read_mode='final'``. Not in Titans.
        compile (bool): run this memory through ``torch.compile`` (compiled on its first call,
            per module, never on import). The memory is many small tensor operations, and
            fusing them is where its time goes; the eager path runs instead while tracing,
            exporting to ONNX, recording ``surprise``, inside an outer ``torch.compile``, and
            after a failed compilation (with a warning). Outputs match the eager path.

    Shape:
        x: (B, C, H, W) -> G: (B, C, H, W), the logits of the gate A = sigmoid(G).
    """

    def __init__(self, in_channels, memory_dim, head_dim=32, chunk_size=196, max_lr=1.0,
                 read_mode='final', memory_type='linear', mlp_ratio=2, chunks_per_group=None,
                 grad_clip=None, center_keys=False, global_query=False, compile=False):
        super().__init__()
        if memory_dim % head_dim:
            raise ValueError(f'memory_dim={memory_dim} must be a multiple of head_dim={head_dim}')
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
        if not max_lr > 0:
            raise ValueError(f'max_lr must be > 0, got {max_lr!r}')
        if read_mode not in READ_MODES:
            raise ValueError(f'read_mode={read_mode!r} is not supported; expected one of {READ_MODES}')
        if chunks_per_group is not None and (
                isinstance(chunks_per_group, bool) or not isinstance(chunks_per_group, int)
                or chunks_per_group < 1):
            raise ValueError(f'chunks_per_group must be an int >= 1 (1: sequential) or None (one '
                             f'group per input), got {chunks_per_group!r}')
        for name, value in (('center_keys', center_keys), ('global_query', global_query),
                            ('compile', compile)):
            if not isinstance(value, bool):
                raise ValueError(f'{name} must be True or False, got {value!r}')
        if global_query and read_mode != 'final':
            raise ValueError("global_query=True reads the final memory: it needs read_mode='final', "
                             f'got {read_mode!r}')
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f'grad_clip must be None (no clip) or > 0, got {grad_clip!r}')
        self.num_heads = memory_dim // head_dim
        self.head_dim = head_dim
        self.chunk_size = chunk_size
        self.max_lr = float(max_lr)
        self.read_mode = read_mode
        self.chunks_per_group = chunks_per_group
        self.grad_clip = grad_clip
        self.center_keys = center_keys
        self.compile = compile
        self._compiled = None  # built on the first compiled call, never saved or copied
        # Switched off by convneur_mm.analysis.memory_stats to measure what the write contributes.
        self.write = True
        # Set to a list to collect every chunk's inner loss ("surprise"), a (G, P) tensor per group.
        self.surprise = None

        # Token-wise projections as Linear layers on channels-last tokens: one GEMM each, where
        # 1x1 convolutions on NCHW maps take a slow oneDNN path on CPU.
        self.reduce = nn.Linear(in_channels, memory_dim)
        self.norm = nn.LayerNorm(memory_dim)
        self.qkv = nn.Linear(memory_dim, 3 * memory_dim)
        # Step size (per token), momentum and decay (per chunk), one of each per head. Zero weights:
        # the gates start data-independent at theta = max_lr / 2, eta ~ 0.9, alpha ~ 0.02.
        self.gates = nn.Linear(memory_dim, 3 * self.num_heads)
        self.memory = FastWeights(self.num_heads, head_dim, memory_type, mlp_ratio)
        # One learned query per head that reads the final memory for every position: the same
        # image-level answer everywhere, whatever each token's own query (normalised like them).
        # Stored flat, like a bias: a direction, kept out of weight decay by ndim-based rules.
        self.global_query = nn.Parameter(torch.randn(self.num_heads * head_dim)) if global_query \
            else None
        self.out_norm_weight = nn.Parameter(torch.ones(self.num_heads, head_dim))
        self.proj = nn.Linear(memory_dim, in_channels)
        self._init_gates()

    def _init_gates(self):
        nh = self.num_heads
        nn.init.zeros_(self.gates.weight)
        with torch.no_grad():
            self.gates.bias[:nh] = 0.0
            self.gates.bias[nh:2 * nh] = _logit(0.9)
            self.gates.bias[2 * nh:] = _logit(0.02)

    def extra_repr(self):
        return (f'heads={self.num_heads}, head_dim={self.head_dim}, chunk_size={self.chunk_size}, '
                f'max_lr={self.max_lr}, read_mode={self.read_mode!r}, '
                f'memory_type={self.memory.memory_type!r}, '
                f'chunks_per_group={self.chunks_per_group}, grad_clip={self.grad_clip}, '
                f'center_keys={self.center_keys}, global_query={self.global_query is not None}, '
                f'compile={self.compile}')

    def __getstate__(self):
        # the compiled function refers back to this module: a copy or an unpickled module
        # compiles its own
        return dict(super().__getstate__(), _compiled=None)

    def forward(self, x):
        """(B, C, H, W) -> (B, C, H, W): see the class docstring."""
        if self.compile and self._compiled is not False and not self._must_run_eagerly():
            if self._compiled is None:
                self._compiled = torch.compile(self._own_forward(), dynamic=None)
            try:
                return self._compiled(x)
            except Exception as error:
                # a missing C++ compiler, an unsupported backend: the eager path always works
                warnings.warn(f'torch.compile of NeuralMemory failed ({type(error).__name__}: '
                              f'{str(error).splitlines()[0] if str(error) else ""}); running '
                              f'it eagerly from now on')
                self._compiled = False
        return self._forward(x)

    def _own_forward(self):
        """``self._forward`` with a code object of its own.

        torch.compile keeps compiled graphs per code object and caps them (8 by default). Shared
        by all memories, that cap sends the ninth compiled graph of a process (four stages of a
        second model, a new input size) back to eager without an error, and every call checks
        the guards of every other memory's graphs first.
        """
        fn = NeuralMemory._forward
        own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                                 fn.__defaults__, fn.__closure__)
        return types.MethodType(own, self)

    def _must_run_eagerly(self):
        return (torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
                or self.surprise is not None)

    def _hand_written_backward(self):
        """Whether this pass takes the hand-written backwards (_UnitQKV, _WriteRead): in eager
        training only; tracing, export and compilers record the plain functions' operations."""
        return torch.is_grad_enabled() and not self._must_run_eagerly()

    def project(self, x):
        """(B, C, H, W) -> tokens (B, N, C_m) in raster order, and q, k, v (B, nh, N, d): unit
        queries and keys (keys centred if ``center_keys``), as the write and the read use them."""
        tokens = self.norm(self.reduce(x.flatten(2).transpose(1, 2)))
        qkv = _UnitQKV.apply if self._hand_written_backward() else unit_qkv
        q, k, v = qkv(self.qkv(tokens), self.num_heads, self.head_dim)
        if self.center_keys:
            k = k - k.mean(2, keepdim=True)
        return tokens, q, k, v

    def _forward(self, x):
        B, _, H, W = x.shape
        N, nh, d = H * W, self.num_heads, self.head_dim
        tokens, q, k, v = self.project(x)
        q, k, v = (t.reshape(B * nh, N, d) for t in (q, k, v))

        # The memory state, its gates and its updates stay in fp32 under autocast: the state is
        # a long sum of small updates and the LN statistics are sensitive to bf16/fp16 rounding.
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        if dtype == tokens.dtype and not torch.is_autocast_enabled(x.device.type):
            y = self._write_and_read(q, k, v, tokens, B, N)
        else:
            with torch.autocast(x.device.type, enabled=False):
                y = self._write_and_read(*(t.to(dtype) for t in (q, k, v, tokens)), B, N)
        y = self.proj(_as(y, tokens.dtype))
        # (B, C, H, W) with channels-last strides, like the local branch it is combined with.
        return y.transpose(1, 2).view(B, -1, H, W)

    def _write_and_read(self, q, k, v, tokens, B, N):
        """Gates, write, read and output norm, in the dtype of the inputs (fp32 or wider):
        (G, N, d) q, k, v and (B, N, C_m) tokens -> (B, N, C_m)."""
        nh, d = self.num_heads, self.head_dim
        dtype = tokens.dtype
        logits = F.linear(tokens, _as(self.gates.weight, dtype), _as(self.gates.bias, dtype))
        y = self._scan(q, k, v, logits, B)
        # per-head RMSNorm, then the heads side by side
        weight = _as(self.out_norm_weight, dtype)
        if nh == 1:
            return F.rms_norm(y, (d,), weight.view(d), 1e-6).view(B, N, d)
        y = F.rms_norm(y.view(B, nh, N, d), (d,), None, 1e-6) * weight.view(1, nh, 1, d)
        return y.transpose(1, 2).reshape(B, N, nh * d)

    def _scan(self, q, k, v, logits, B):
        """Write the chunks group by group, then read. q, k, v: (G, N, d); logits: (B, N, 3 * nh).

        Returns (G, N, d). Everything that does not depend on the fast weights is computed for all
        chunks before the loop over groups.
        """
        G, N, d = q.shape
        # An input shorter than a chunk is one chunk of its own length: padding it to chunk_size
        # (4x the tokens of stage 4 at 800x1333 with detection's 4096) would compute nothing.
        nh, L = self.num_heads, min(self.chunk_size, N)
        T = -(-N // L)
        pad = T * L - N
        weights = self.memory.initial_state(B, q.dtype)
        gamma, beta = self.memory.ln_params(B, q.dtype)
        # 'prev' never reads the last chunk's write, so it is not computed.
        writes = (T if self.read_mode == 'final' else T - 1) if self.write else 0
        if writes == 0:
            return self._final_read(weights, q, gamma, beta, B)

        lr = torch.sigmoid(logits[..., :nh])  # per-token step / (max_lr / d), (B, N, nh)
        # eta, alpha per chunk from the mean logit of its tokens (a padded last chunk: of its
        # valid ones), kept as logs: (G, T)
        means = logits[..., nh:]
        if pad:
            counts = torch.full((T, 1), float(L), device=q.device, dtype=q.dtype)
            counts[-1] = L - pad
            means = F.pad(means, (0, 0, 0, pad)).unflatten(1, (T, L)).sum(2) / counts
        else:
            means = means.unflatten(1, (T, L)).mean(2)
        means = means.view(B, T, 2, nh).permute(2, 0, 3, 1).reshape(2, G, T)
        log_eta, log_keep = F.logsigmoid(means[0]), F.logsigmoid(-means[1])
        lr = lr.transpose(1, 2).reshape(G, N, 1)

        P = writes if self.chunks_per_group is None else min(self.chunks_per_group, writes)
        if (P == writes == T and self.read_mode == 'final' and self.grad_clip is None
                and self.memory.memory_type == 'linear' and self.global_query is None
                and self.surprise is None):
            # the default: one group, read at its end (see write_read); every token's step
            # carries its chunk's weight, so the tokens need no padding to whole chunks
            if T == 1:
                keep, step = log_keep.exp().view(G, 1, 1), lr
            else:
                keep, c, _ = group_end_weights(log_eta, log_keep, momentum=False)
                keep = keep.view(G, 1, 1)
                step = lr * c[:, 1:].unsqueeze(-1).expand(G, T, L).reshape(G, T * L, 1)[:, :N]
            args = (q, k, v, step, keep, weights[0], gamma, beta, -2 * self.max_lr / d)
            return _WriteRead.apply(*args) if self._hand_written_backward() else write_read(*args)

        queries = q
        if pad:
            # The last chunk is padded and masked (lr = 0), not dropped.
            q, k, v, lr = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v, lr))

        # The inner loss sum_i theta_i mean_d (k_i + gamma * normed_i + beta - v_i)^2 has the
        # gradient lr * (c0 + c1 * normed) with respect to the normalised map, with
        # theta = (max_lr / d) * lr, c0 = 2 (max_lr / d) gamma (k + beta - v) and
        # c1 = 2 (max_lr / d) gamma^2 known before the loop. Both are negated so that the loop
        # accumulates -grad directly.
        scale = gamma * (-2 * self.max_lr / d)
        c1 = scale * gamma
        c0 = torch.addcmul(scale * beta, k - v, scale)

        # With 'final' reads (and no clip, which needs each chunk's gradient) only the end state
        # of a group is ever used, and it is a weighted sum of the group's chunk gradients, which
        # are sums over tokens: one product per group, no per-chunk gradient or state.
        ends_only = self.read_mode == 'final' and self.grad_clip is None and (P > 1 or T == 1)
        if P == 1 and not ends_only:
            # The sequential form runs once per chunk and is bound by the number of small
            # operations, so its gates are taken out of log space once, before the loop.
            eta, keep = log_eta.exp().view(G, T, 1, 1).unbind(1), log_keep.exp().view(G, T, 1, 1).unbind(1)
        momentum = None if ends_only else [w.new_zeros(w.shape) for w in weights]
        reads = []
        for start in range(0, writes, P):
            p = min(P, writes - start)
            span, chunks = slice(start * L, (start + p) * L), slice(start, start + p)
            if self.read_mode == 'prev' and P == 1:
                reads.append(self.memory.normalized(weights, q[:, span])[0])
            normed, cache = self.memory.normalized(weights, k[:, span])
            d_normed = torch.addcmul(c0[:, span], c1, normed)
            if self.surprise is not None:
                err = torch.addcmul(k[:, span] - v[:, span] + beta, normed, gamma)
                theta = lr[:, span] * (self.max_lr / d)
                self.surprise.append((theta * err.square()).view(G, p, -1).sum(-1).detach())
            if ends_only:
                weights, momentum = self._write_group(
                    weights, momentum, cache, d_normed, lr[:, span], log_eta[:, chunks],
                    log_keep[:, chunks], last=start + p == writes)
                continue
            updates = self.memory.chunk_grads(cache, d_normed, lr[:, span], p)
            if self.grad_clip is not None:
                # centred over the output dimension first, so that the clip reads only what a
                # read can see
                updates[-1] = updates[-1] - updates[-1].mean(-1, keepdim=True)
                updates = [soft_clip(u, self.grad_clip) for u in updates]
            if P == 1:
                for i, u in enumerate(updates):
                    momentum[i] = torch.addcmul(u[:, 0], eta[start], momentum[i])
                    weights[i] = torch.addcmul(momentum[i], keep[start], weights[i])
                continue
            states = []
            for i, u in enumerate(updates):
                s, momentum[i] = momentum_forgetting(u, log_eta[:, chunks], log_keep[:, chunks],
                                                     weights[i], momentum[i])
                states.append(s)
            if self.read_mode == 'prev':
                # chunk start + j reads the state after start + j writes: W_s, then W_1..W_{p-1}
                before = [torch.cat([w.unsqueeze(1), s[:, :-1]], 1) for w, s in zip(weights, states)]
                reads.append(self._read_chunks(before, q[:, span], p))
            weights = [s[:, -1] for s in states]
        if self.read_mode == 'final':
            return self._final_read(weights, q, gamma, beta, B)[:, :N]
        reads.append(self.memory.normalized(weights, q[:, writes * L:])[0])
        return torch.addcmul(q + beta, torch.cat(reads, 1), gamma)[:, :N]

    def _write_group(self, weights, momentum, cache, d_normed, lr, log_eta, log_keep, last):
        """The state after one group of p chunks whose gradients are all taken at ``weights``.

        W_end = a W + c_0 S + sum_j c_j u_j and S_end = e_0 S + sum_j e_j u_j
        (:func:`group_end_weights`); each sum over chunks is one sum over the group's tokens,
        every token weighted by its chunk's coefficient. ``momentum`` is None before the first
        group (S = 0), and the last group's momentum is not computed (nothing reads it).
        """
        G, p = log_eta.shape
        if p == 1 and last and momentum is None:  # W_1 = keep W_0 + u: no weights to solve for
            u = self.memory.summed_grads(cache, d_normed, lr)
            return [torch.addcmul(g[:, 0], log_keep.exp().view(G, 1, 1), w)
                    for w, g in zip(weights, u)], None
        a, c, e = group_end_weights(log_eta, log_keep, momentum=not last)
        coefs = c.unsqueeze(-1) if last else torch.stack([c, e], -1)  # (G, p + 1, R)
        R = coefs.shape[-1]
        per_token = coefs[:, 1:].unsqueeze(2).expand(G, p, lr.shape[1] // p, R)
        sums = self.memory.summed_grads(cache, d_normed, lr * per_token.reshape(G, -1, R))
        a = a.view(G, 1, 1)
        new_weights, new_momentum = [], []
        for i, (w, u) in enumerate(zip(weights, sums)):
            w = torch.addcmul(u[:, 0], a, w)
            if momentum is not None:
                w = torch.addcmul(w, c[:, 0].view(G, 1, 1), momentum[i])
            new_weights.append(w)
            if not last:
                s = u[:, 1] if momentum is None else torch.addcmul(u[:, 1], e[:, 0].view(G, 1, 1),
                                                                   momentum[i])
                new_momentum.append(s)
        return new_weights, new_momentum

    def _final_read(self, weights, q, gamma, beta, B):
        """Every token's read of the final memory (G, n, d), plus the global query's read."""
        y = self.memory(weights, q, (gamma, beta))
        if self.global_query is None:
            return y
        g = self.global_query.to(q.dtype).view(self.num_heads, 1, self.head_dim)
        g = F.normalize(g, dim=-1).repeat(B, 1, 1)  # (G, 1, d)
        return y + self.memory(weights, g, (gamma, beta))

    def _read_chunks(self, states, q, num_chunks):
        """Normalised read of P chunks of queries (G, P * L, d), chunk j with states[:, j]."""
        G, n, d = q.shape
        flat = [s.reshape(G * num_chunks, *s.shape[2:]) for s in states]
        normed = self.memory.normalized(flat, q.reshape(G * num_chunks, n // num_chunks, d))[0]
        return normed.view(G, n, d)


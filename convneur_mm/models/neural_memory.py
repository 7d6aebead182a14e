"""The global branch of ConvNeur: a per-image neural memory written chunk by chunk (Titans-style).

Notation used in the shapes below: B images, C input channels, H x W positions, N = H * W tokens,
``nh`` heads of size ``d`` (C_m = nh * d), G = B * nh independent memories, L the chunk length and
T = ceil(N / L) chunks.

Inner loop, per memory g and chunk t (all in fp32, whatever the autocast state)::

    loss_t(W) = sum_i theta_i * || f_W(k_i) - v_i ||^2          (i over the tokens of chunk t)
    S_t = eta_t * S_{t-1} - clip(grad_W loss_t(W_{t-1}))
    W_t = (1 - alpha_t) * W_{t-1} + S_t

with the linear memory ``f_W(z) = z + LN(z W)`` or the MLP memory ``f_W(z) = z + LN(gelu(z W1) W2)``.
The inner gradients are written out in closed form (no ``autograd.grad`` in forward), so the whole
loop is an ordinary differentiable graph: it works with checkpointing, tracing, ONNX and compile,
and the outer optimiser trains the projections, the gates and the learned initial weights through it.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

READ_MODES = ('prev', 'final')
MEMORY_TYPES = ('linear', 'mlp')


def _logit(p):
    return math.log(p / (1 - p))


def soft_clip(g, max_norm, eps=1e-12):
    """Scale each matrix of ``g`` (G, a, b) to norm ``max_norm * tanh(norm / max_norm)``.

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
        # Learned initial memory, shared by all images and reset for every image.
        self.initial = nn.ParameterList(
            nn.Parameter(torch.randn(num_heads, *s) * 0.02) for s in shapes)
        self.norm_weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def initial_state(self, batch_size, dtype):
        """Fast weights of a fresh memory per image: list of (B * nh, fan_in, fan_out) tensors."""
        return [w.to(dtype).repeat(batch_size, 1, 1) for w in self.initial]

    def ln_params(self, batch_size, dtype):
        """LayerNorm weight and bias of every memory: two (B * nh, 1, d) tensors."""
        # row g = b * nh + h takes head h's parameters
        return (self.norm_weight.to(dtype).repeat(batch_size, 1).unsqueeze(1),
                self.norm_bias.to(dtype).repeat(batch_size, 1).unsqueeze(1))

    def normalized(self, weights, z):
        """LN(z W) (or LN(gelu(z W1) W2)) without the affine part, for z (G, n, d).

        Returns the normalised (G, n, d) map and a cache for :meth:`grad`.
        """
        if self.memory_type == 'linear':
            hidden = act = None
            pre = torch.bmm(z, weights[0])
        else:
            hidden = torch.bmm(z, weights[0])
            act = F.gelu(hidden)
            pre = torch.bmm(act, weights[1])
        # Written out rather than Tensor.var (slow on CPU for a short last dimension), and rstd
        # is kept because the closed-form gradient needs it.
        centred = pre - pre.mean(-1, keepdim=True)
        rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + 1e-5)
        normed = centred * rstd
        return normed, (z, hidden, act, normed, rstd)

    def forward(self, weights, z, ln):
        """Read the memory: f_W(z) = z + LN(...) for z (G, n, d)."""
        normed = self.normalized(weights, z)[0]
        return torch.addcmul(z + ln[1], normed, ln[0])

    def grad(self, weights, cache, d_normed, lr, lr_z=None):
        """Closed-form gradient of the inner loss with respect to each weight.

        Args:
            cache: from :meth:`normalized`, for the written tokens z.
            d_normed: (G, n, d) gradient of the loss with respect to the normalised map, without
                the per-token step size.
            lr: (G, n, 1) per-token step size.
            lr_z: ``lr * z`` when the caller has it already (computed for all chunks at once).
        Returns:
            list of (G, fan_in, fan_out) gradients, in the order of ``weights``.
        """
        z, hidden, act, normed, rstd = cache
        lr_z = lr * z if lr_z is None else lr_z
        g = d_normed
        # Back through the normalisation (the standard LayerNorm backward). Everything after
        # this point is linear per token, so the step size is applied to the (smaller) inputs
        # of the final products instead of to the gradient.
        d_pre = rstd * (g - g.mean(-1, keepdim=True)
                        - normed * (g * normed).mean(-1, keepdim=True))
        if self.memory_type == 'linear':
            return [torch.bmm(lr_z.transpose(1, 2), d_pre)]
        d_act = torch.bmm(d_pre, weights[1].transpose(1, 2))
        # derivative of the exact (erf) GELU: Phi(x) + x * phi(x)
        cdf = 0.5 * (1 + torch.erf(hidden * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * hidden.square()) * (1 / math.sqrt(2 * math.pi))
        d_hidden = d_act * (cdf + hidden * pdf)
        return [torch.bmm(lr_z.transpose(1, 2), d_hidden),
                torch.bmm((lr * act).transpose(1, 2), d_pre)]


class NeuralMemory(nn.Module):
    """Global context map of a stage: write the tokens into a per-image memory, read them back.

    Args:
        in_channels (int): C.
        memory_dim (int): C_m, width of the tokens written into the memory (C_m < C).
        head_dim (int): d; C_m must be a multiple of it.
        chunk_size (int): L, tokens written per memory update.
        max_lr (float): upper bound of the per-token inner step size (1 for classification,
            1e-3 for detection in the paper).
        read_mode (str): ``'prev'``: each chunk reads the memory as it was before its own write
            (the paper's formula); ``'final'``: every chunk is written, then every token reads the
            final memory.
        memory_type (str): ``'linear'`` or ``'mlp'``, see :class:`FastWeights`.
        grad_clip (float): m of the soft norm clip applied to every chunk's gradient.

    Shape:
        x: (B, C, H, W) -> G: (B, C, H, W), the logits of the gate A = sigmoid(G).
    """

    def __init__(self, in_channels, memory_dim, head_dim=32, chunk_size=196, max_lr=1.0,
                 read_mode='final', memory_type='linear', mlp_ratio=2, grad_clip=1.0):
        super().__init__()
        if memory_dim % head_dim:
            raise ValueError(f'memory_dim={memory_dim} must be a multiple of head_dim={head_dim}')
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
        if not max_lr > 0:
            raise ValueError(f'max_lr must be > 0, got {max_lr!r}')
        if read_mode not in READ_MODES:
            raise ValueError(f'read_mode={read_mode!r} is not supported; expected one of {READ_MODES}')
        self.num_heads = memory_dim // head_dim
        self.head_dim = head_dim
        self.chunk_size = chunk_size
        self.max_lr = float(max_lr)
        self.read_mode = read_mode
        self.grad_clip = grad_clip

        # Token-wise projections as Linear layers on channels-last tokens: one GEMM each, where
        # 1x1 convolutions on NCHW maps take a slow oneDNN path on CPU.
        self.reduce = nn.Linear(in_channels, memory_dim)
        self.norm = nn.LayerNorm(memory_dim)
        self.qkv = nn.Linear(memory_dim, 3 * memory_dim)
        # Step size (per token), momentum and decay (per chunk), one of each per head. Zero weights:
        # the gates start data-independent at lr = max_lr / (2L), eta ~ 0.9, alpha ~ 0.02.
        self.gates = nn.Linear(memory_dim, 3 * self.num_heads)
        self.memory = FastWeights(self.num_heads, head_dim, memory_type, mlp_ratio)
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
                f'memory_type={self.memory.memory_type!r}')

    def forward(self, x):
        B, _, H, W = x.shape
        N, nh, d = H * W, self.num_heads, self.head_dim
        tokens = self.norm(self.reduce(x.flatten(2).transpose(1, 2)))  # (B, N, C_m), raster order
        q, k, v = F.silu(self.qkv(tokens)).view(B, N, 3, nh, d).permute(2, 0, 3, 1, 4).unbind(0)
        q = F.normalize(q, dim=-1).reshape(B * nh, N, d)
        k = F.normalize(k, dim=-1).reshape(B * nh, N, d)
        v = v.reshape(B * nh, N, d)

        # The memory state, its gates and its updates stay in fp32 under autocast: the state is
        # a long sum of small updates and the LN statistics are sensitive to bf16/fp16 rounding.
        dtype = torch.promote_types(tokens.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(tokens.to(dtype), self.gates.weight.to(dtype), self.gates.bias.to(dtype))
            y = self._scan(q.to(dtype), k.to(dtype), v.to(dtype), logits, B)
            y = y.view(B, nh, N, d)
            y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-6)  # per-head RMSNorm
            y = y * self.out_norm_weight.to(dtype).view(1, nh, 1, d)
        y = self.proj(y.to(tokens.dtype).transpose(1, 2).reshape(B, N, nh * d))
        # (B, C, H, W) with channels-last strides, like the local branch it is combined with.
        return y.transpose(1, 2).view(B, -1, H, W)

    def _scan(self, q, k, v, logits, B):
        """Sequential chunk loop. q, k, v: (G, N, d); logits: (B, N, 3 * nh). Returns (G, N, d).

        The loop runs once per chunk and is bound by the number of small operations, not by
        arithmetic, so everything that does not depend on the fast weights is computed for all
        chunks before it.
        """
        G, N, d = q.shape
        nh, L = self.num_heads, self.chunk_size
        T = -(-N // L)
        pad = T * L - N
        lr = (self.max_lr / L) * torch.sigmoid(logits[..., :nh])  # per token: (B, N, nh)
        means = logits[..., nh:]
        if pad:
            # The last chunk is padded and masked (lr = 0, excluded from the chunk means), not dropped.
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            lr, means = F.pad(lr, (0, 0, 0, pad)), F.pad(means, (0, 0, 0, pad))
        lr = lr.permute(0, 2, 1).reshape(G, T * L, 1)
        # eta, alpha per chunk from the mean logit of its valid tokens: (T, G, 1, 1)
        counts = torch.full((T, 1), float(L), device=q.device, dtype=q.dtype)
        counts[-1] = L - pad
        means = means.view(B, T, L, 2 * nh).sum(2) / counts
        eta, alpha = torch.sigmoid(means).view(B, T, 2, nh).permute(2, 1, 0, 3).reshape(2, T, G, 1, 1)
        keep = 1 - alpha

        gamma, beta = self.memory.ln_params(B, q.dtype)
        # The inner loss sum_i lr_i ||k_i + gamma * normed_i + beta - v_i||^2 has the gradient
        # lr * (c0 + c1 * normed) with respect to the normalised map, with c0 = 2 gamma (k + beta
        # - v) and c1 = 2 gamma^2 known before the loop. Both are negated so that the loop
        # accumulates -grad directly (soft_clip is odd).
        c1 = -2 * gamma.square()
        c0 = torch.addcmul(-2 * gamma * beta, k - v, -2 * gamma).split(L, 1)
        lr_chunks = lr.split(L, 1)
        lr_k = (lr * k).split(L, 1)
        q_chunks, k_chunks = q.split(L, 1), k.split(L, 1)
        eta, keep = eta.unbind(0), keep.unbind(0)

        weights = self.memory.initial_state(B, q.dtype)
        momentum = [torch.zeros_like(w) for w in weights]
        reads = []
        for t in range(T):
            if self.read_mode == 'prev':
                # Read and the forward pass of the write share W_{t-1}: one batched pass.
                normed, cache = self.memory.normalized(weights, torch.cat([q_chunks[t], k_chunks[t]], 1))
                reads.append(normed[:, :L])
                if t == T - 1:
                    break  # in 'prev' mode the last write is never read
                cache = (k_chunks[t],) + tuple(None if c is None else c[:, L:] for c in cache[1:])
                normed = normed[:, L:]
            else:
                normed, cache = self.memory.normalized(weights, k_chunks[t])
            neg_grads = self.memory.grad(weights, cache, torch.addcmul(c0[t], c1, normed),
                                         lr_chunks[t], lr_k[t])
            for i, g in enumerate(neg_grads):
                momentum[i] = torch.addcmul(soft_clip(g, self.grad_clip), eta[t], momentum[i])
                weights[i] = torch.addcmul(momentum[i], keep[t], weights[i])
        if self.read_mode == 'prev':
            y = torch.addcmul(q + beta, torch.cat(reads, 1), gamma)
        else:
            y = self.memory(weights, q, (gamma, beta))
        return y[:, :N]

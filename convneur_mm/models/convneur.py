"""ConvNeur: a convolutional local branch in every block, a neural-memory global branch per stage.

    x ─ stem (2 x conv3x3/s2) ─┬─ stage 1 ─ stage 2 ─ stage 3 ─ stage 4      strides 4/8/16/32
                               ╰ each stage:  downsample ─ G = memory(x) ─ blocks, each
                                              x + DropPath(gamma * sigmoid(G) * local(x))
                                              (fusion='add': x + DropPath(gamma * (local(x) + G)))

Shapes: input (B, in_channels, H, W) with any H, W >= 1; stage i outputs (B, widths[i],
ceil(H / s), ceil(W / s)) with s = 4 * 2**i.
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule, initialize

from ..checkpoint import load_pretrained
from .neural_memory import NeuralMemory

MEMORY_PLACEMENTS = ('stage', 'block', 'none')
FUSIONS = ('gate', 'add')


def drop_path_scale(x, p, training):
    """Stochastic depth as a (B, 1, 1, 1) scale of a residual branch: whole samples are zeroed
    with probability p and the others scaled by 1 / (1 - p); None when nothing is dropped."""
    if p == 0.0 or not training:
        return None
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return keep / (1 - p)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map.

    LayerNorm rather than BatchNorm: downstream recipes train with 2 images per GPU, where batch
    statistics are poor and SyncBN costs a collective per norm, and a quick CPU check showed no
    clear speed gap between the two in a channels-last block.
    """

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Stem(nn.Sequential):
    """Two 3x3 stride-2 convs: (B, in, H, W) -> (B, C, ceil(H/4), ceil(W/4))."""

    def __init__(self, in_channels, out_channels):
        mid = out_channels // 2
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, stride=2, padding=1), LayerNorm2d(mid), nn.GELU(),
            nn.Conv2d(mid, out_channels, 3, stride=2, padding=1), LayerNorm2d(out_channels))


class PatchifyStem(nn.Module):
    """ConvNeXt's stem, one 4x4 stride-4 conv and a LayerNorm: (B, in, H, W) -> (B, C, ceil(H/4),
    ceil(W/4)).

    Not the paper's (it does not describe one) and not the default: an option for measuring how
    much the stem explains of how fast a network learns from scratch. Sizes that are not
    multiples of 4 are zero-padded at the bottom/right, for the same ceil-mode sizes as
    :class:`Stem`.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 4, stride=4)
        self.norm = LayerNorm2d(out_channels)

    def forward(self, x):
        x = F.pad(x, (0, -x.shape[-1] % 4, 0, -x.shape[-2] % 4))
        return self.norm(self.conv(x))


STEMS = {'conv': Stem, 'patchify': PatchifyStem}


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2) of channels-last (B, H, W, C) maps.

    x + gamma * (x * N) + beta, with N the per-channel L2 norm over positions divided by its
    mean over channels. gamma and beta start at zero, so it starts as the identity. An option
    for measuring what ConvNeXt-V2's GRN adds to the local branch, not part of the paper's block.
    """

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        norms = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        n = norms / (norms.mean(-1, keepdim=True) + self.eps)
        return torch.addcmul(x + self.beta, self.gamma * x, n)


class Downsample(nn.Module):
    """LayerNorm then 2x2 stride-2 conv: (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)).

    Odd sizes are zero-padded at the bottom/right (after the norm, so the padding stays zero),
    which gives ceil-mode sizes instead of silently dropping the last row or column.
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm = LayerNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 2, stride=2)

    def forward(self, x):
        x = self.norm(x)
        return self.conv(F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)))


class ConvNeurBlock(nn.Module):
    """Local branch (DW kxk conv, LN, pointwise MLP) gated by the stage's global map.

    Args:
        channels (int): C.
        kernel_size (int): depthwise kernel size.
        mlp_ratio (float): pointwise expansion.
        drop_path (float): stochastic depth rate of this block.
        layer_scale_init_value (float): initial gamma; 0 disables layer scale.
        memory_cfg (dict | None): with ``memory_placement='block'``, the block's own
            :class:`NeuralMemory` arguments.
        fusion (str): how the global map G enters: ``'gate'`` multiplies the local branch by
            sigmoid(G), ``'add'`` adds G to it (the paper's additive ablation).
        gate_scale (float): with ``'gate'`` fusion, the gate is ``gate_scale * sigmoid(G)``.
        use_grn (bool): a :class:`GRN` after the MLP's activation, as in ConvNeXt-V2.

    Shape:
        x: (B, C, H, W); context: (B, C, H, W) or None -> (B, C, H, W). The context is the
        stage's global map, already passed through the (scaled) sigmoid for ``'gate'`` fusion.
    """

    def __init__(self, channels, kernel_size=7, mlp_ratio=4.0, drop_path=0.0,
                 layer_scale_init_value=1e-6, memory_cfg=None, fusion='gate', gate_scale=1.0,
                 use_grn=False):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                groups=channels)
        self.norm = nn.LayerNorm(channels)
        hidden = int(mlp_ratio * channels)
        # Pointwise layers as Linear on channels-last tokens: one GEMM each, no im2col.
        self.pwconv1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        # None, not nn.Identity, when off: no extra module call per block in the default model
        self.grn = GRN(hidden) if use_grn else None
        self.pwconv2 = nn.Linear(hidden, channels)
        self.gamma = (nn.Parameter(torch.full((channels,), float(layer_scale_init_value)))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = drop_path
        self.fusion = fusion
        self.gate_scale = gate_scale
        self.memory = NeuralMemory(channels, **memory_cfg) if memory_cfg is not None else None

    def forward(self, x, context=None):
        if self.memory is not None:
            context = global_context(self.memory(x), self.fusion, self.gate_scale)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.act(self.pwconv1(self.norm(y)))
        if self.grn is not None:
            y = self.grn(y)
        y = self.pwconv2(y).permute(0, 3, 1, 2)
        if context is not None and self.fusion == 'add':
            y, context = y + context, None
        # The gate, the layer scale and stochastic depth all scale the branch: their product
        # (small, or one map) is taken first, then x + y * scale in one pass over the map.
        scale = None if self.gamma is None else self.gamma.view(-1, 1, 1)
        for factor in (context, drop_path_scale(x, self.drop_path, self.training)):
            if factor is not None:
                scale = factor if scale is None else scale * factor
        return x + y if scale is None else torch.addcmul(x, y, scale)


def global_context(g, fusion, gate_scale=1.0):
    """What the blocks combine with their local branch: gate_scale * sigmoid(G) for gating, G for
    addition."""
    if fusion != 'gate':
        return g
    return torch.sigmoid(g) if gate_scale == 1 else torch.sigmoid(g) * gate_scale


class ConvNeurStage(nn.Module):
    """Downsample, the stage's neural memory (``'stage'`` placement) and its blocks.

    Shape: (B, C_in, H, W) -> (B, C, ceil(H/2), ceil(W/2)) (no downsampling for the first stage,
    whose input comes from the stem with C_in = C).
    """

    def __init__(self, in_channels, channels, depth, downsample, drop_paths, memory_placement,
                 memory_cfg, with_cp=False, fusion='gate', gate_scale=1.0, **block_kwargs):
        super().__init__()
        self.downsample = Downsample(in_channels, channels) if downsample else nn.Identity()
        self.memory = (NeuralMemory(channels, **memory_cfg)
                       if memory_placement == 'stage' else None)
        block_memory = memory_cfg if memory_placement == 'block' else None
        self.blocks = nn.ModuleList(
            ConvNeurBlock(channels, drop_path=drop_paths[i], memory_cfg=block_memory, fusion=fusion,
                          gate_scale=gate_scale, **block_kwargs)
            for i in range(depth))
        self.with_cp = with_cp
        self.fusion = fusion
        self.gate_scale = gate_scale

    def _maybe_cp(self, fn, *args):
        # Recompute in backward only where it saves something: a frozen stage stores nothing anyway.
        if self.with_cp and self.training and any(a is not None and a.requires_grad for a in args):
            return cp.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x):
        x = self.downsample(x)
        context = None
        if self.memory is not None:
            # once per stage, not once per block
            context = global_context(self._maybe_cp(self.memory, x), self.fusion, self.gate_scale)
        for block in self.blocks:
            x = self._maybe_cp(block, x, context)
        return x


class ConvNeur(BaseModule):
    """ConvNeur backbone ("Efficiency Follows Global-Local Decoupling", CVPR 2026).

    One implementation for detection, segmentation and classification.

    Args:
        arch (str | dict): ``'m1'``, ``'m2'``, ``'m3'``, ``'m4'`` or a dict with the keys of
            :attr:`arch_zoo` entries (``widths``, ``depths``, ``memory_dim``, ``head_dim``,
            ``chunk_size``, ``max_lr``); ``memory_dim`` is one C_m per stage, or one int for
            every stage.
        in_channels (int): input image channels. Default: 3.
        out_indices (int | Sequence[int]): stages whose outputs are returned (0-3, negative
            counts from the end). Default: (0, 1, 2, 3).
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and stages 1..k
            (parameters get ``requires_grad=False`` and stay in eval mode). Default: -1.
        norm_eval (bool): keep BatchNorm layers in eval mode while training. ConvNeur has only
            LayerNorms, so this only affects BatchNorms a user adds; kept for config portability.
        with_cp (bool): gradient checkpointing of every block and memory. Default: False.
        drop_path_rate (float): stochastic depth, linearly increasing over all blocks.
        layer_scale_init_value (float): initial layer scale; 0 disables it. Default: 1e-6.
        kernel_size (int): depthwise kernel size of the local branch. Default: 7.
        mlp_ratio (float): pointwise expansion of the local branch. Default: 4.
        chunk_size (int | None): tokens per memory write; None takes the preset's (196).
            The paper uses 4096 for detection.
        max_lr (float | None): maximum inner step size; None takes the preset's (1.0).
            The paper uses 1e-3 for detection.
        read_mode (str): ``'final'`` (default) or ``'prev'``, see :class:`NeuralMemory`. With
            ``'prev'``, a stage whose tokens fit in one chunk only reads the learned initial
            memory, so its step/momentum/decay gates get no gradient (DDP then needs
            ``find_unused_parameters=True``).
        memory_placement (str): ``'stage'`` (one memory per stage, its map gates every block),
            ``'block'`` (one per block) or ``'none'`` (local branch only).
        fusion (str): ``'gate'`` (default, the paper's x + gamma * sigmoid(G) * local(x)) or
            ``'add'`` (x + gamma * (local(x) + G), the additive ablation).
        memory_type (str): ``'linear'`` or ``'mlp'`` fast weights.
        chunks_per_group (int | None): chunks whose inner gradients are taken at the memory state
            that starts their group (Titans' mini-batch gradient descent). None (default): one
            group per stage, titans_pytorch's default; 1: fully sequential.
        grad_clip (float | None): soft norm clip of every chunk's inner gradient; None (default,
            as in titans_pytorch): no clip.
        center_keys (bool): write every token in proportion to how far its key is from the
            image's mean key (see :class:`NeuralMemory`). Default: False.
        global_query (bool): every position also reads each memory with a learned query (see
            :class:`NeuralMemory`). Default: False.
        compile_memory (bool): run every memory through ``torch.compile`` (compiled on the
            first call; eager while tracing or exporting). Default: False.
        zero_init_memory (bool): start every memory's output projection at zero, so that G = 0:
            training starts from the local-only network (its branches scaled by the constant
            gate sigmoid(0) = 1/2) and the memory enters as the projection learns, as
            ``zero_init_residual`` does for ResNet's blocks. An initialisation for training from
            scratch, not an architecture change. Default: False (the projection is initialised
            like every other layer).
        gate_bias_init (float): initial bias of every memory's output projection, so that the
            gate starts near sigmoid(gate_bias_init) instead of 1/2 (``fusion='gate'`` only).
            With the default 0 every block's branch starts halved; a from-scratch run whose
            layer scales grow by about the learning rate per step then needs twice as many
            steps to reach a given branch size. An initialisation, not an architecture change.
            Default: 0.
        gate_scale (float): the gate is ``gate_scale * sigmoid(G)`` (``fusion='gate'`` only).
            With 2 it starts at 1, so the branches are not halved, and keeps the sigmoid's full
            slope (``gate_bias_init=2`` starts at 0.88 with 0.42 of it). With layer scale on,
            the same functions as the default (the factor moves into gamma); what changes is
            training: under AdamW a layer scale grows by about the learning rate per step, so
            the branches grow gate_scale times faster. A reparametrisation for training from
            scratch. Default: 1 (the paper's gate).
        stem (str): ``'conv'`` (default: two 3x3 stride-2 convs, :class:`Stem`) or
            ``'patchify'`` (ConvNeXt's 4x4 stride-4 conv, :class:`PatchifyStem`). The paper does
            not describe its stem; ``'patchify'`` is the from-scratch recipe of the dense scenes
            configs (``configs/scenes/*-patchify*.py``), where it trained faster.
        use_grn (bool): ConvNeXt-V2's global response normalisation in every block's MLP
            (:class:`GRN`, the identity at initialisation). Not in the paper. Default: False.
        gap_before_final_norm (bool): return global-average-pooled (B, C) vectors (for a
            classification head) instead of maps. Default: False.
        init_cfg (dict | list[dict] | None): e.g. ``dict(type='Pretrained', checkpoint=...,
            prefix='backbone.')``. Missing and unexpected keys are reported; a checkpoint that
            shares no key with the model is an error.

    Returns:
        tuple[Tensor]: one (B, C_i, ceil(H / s_i), ceil(W / s_i)) map per ``out_indices`` entry
        (or (B, C_i) with ``gap_before_final_norm``).
    """

    # One table for the presets. Fitted so that, with a 1000-class linear head, parameters and
    # FLOPs at 224x224 are within 5% of the paper (tools/analysis/model_complexity.py prints them).
    # The memory width C_m is per stage and below the stage's width everywhere (the paper's
    # bottleneck), with M3's C_m = 128 in stages 3-4; M2 and M3 took back the FLOPs that narrower
    # stage-1/2 memories freed as one or two more high-resolution blocks.
    arch_zoo = {
        'm1': dict(widths=(40, 80, 160, 280), depths=(2, 2, 8, 3), memory_dim=(32, 32, 32, 32),
                   head_dim=32, chunk_size=196, max_lr=1.0),
        'm2': dict(widths=(48, 96, 192, 384), depths=(3, 4, 4, 3), memory_dim=(32, 64, 64, 64),
                   head_dim=32, chunk_size=196, max_lr=1.0),
        'm3': dict(widths=(56, 112, 224, 560), depths=(3, 4, 9, 2),
                   memory_dim=(32, 64, 128, 128), head_dim=32, chunk_size=196, max_lr=1.0),
        'm4': dict(widths=(80, 160, 320, 560), depths=(2, 2, 9, 3),
                   memory_dim=(64, 128, 128, 128), head_dim=32, chunk_size=196, max_lr=1.0),
    }
    default_init_cfg = [
        dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=0.02, bias=0.0),
        dict(type='Constant', layer=['LayerNorm'], val=1.0, bias=0.0)]
    arch_keys = ('widths', 'depths', 'memory_dim', 'head_dim', 'chunk_size', 'max_lr')
    num_stages = 4

    def __init__(self, arch='m2', in_channels=3, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 norm_eval=False, with_cp=False, drop_path_rate=0.0, layer_scale_init_value=1e-6,
                 kernel_size=7, mlp_ratio=4.0, chunk_size=None, max_lr=None, read_mode='final',
                 memory_placement='stage', memory_type='linear', fusion='gate',
                 chunks_per_group=None, grad_clip=None, center_keys=False, global_query=False,
                 compile_memory=False, zero_init_memory=False, gate_bias_init=0.0, gate_scale=1.0,
                 stem='conv', use_grn=False, gap_before_final_norm=False, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(zero_init_memory, bool):
            raise ValueError(f'zero_init_memory must be True or False, got {zero_init_memory!r}')
        if isinstance(gate_bias_init, bool) or not isinstance(gate_bias_init, (int, float)) \
                or not math.isfinite(gate_bias_init):
            raise ValueError(f'gate_bias_init must be a finite number, got {gate_bias_init!r}')
        if gate_bias_init and fusion != 'gate':
            raise ValueError(f"gate_bias_init={gate_bias_init} sets where the gate starts; it needs "
                             f"fusion='gate', got fusion={fusion!r}")
        if isinstance(gate_scale, bool) or not isinstance(gate_scale, (int, float)) \
                or not (math.isfinite(gate_scale) and gate_scale > 0):
            raise ValueError(f'gate_scale must be a finite number > 0, got {gate_scale!r}')
        if gate_scale != 1 and fusion != 'gate':
            raise ValueError(f"gate_scale={gate_scale} scales the gate; it needs fusion='gate', "
                             f"got fusion={fusion!r}")
        if stem not in STEMS:
            raise ValueError(f'stem={stem!r} is not supported; expected one of {tuple(STEMS)}')
        if not isinstance(use_grn, bool):
            raise ValueError(f'use_grn must be True or False, got {use_grn!r}')
        self.zero_init_memory = zero_init_memory
        self.gate_bias_init = float(gate_bias_init)
        self.arch = self.parse_arch(arch)
        widths, depths = self.arch['widths'], self.arch['depths']
        self.out_indices = self._parse_out_indices(out_indices)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_stages}] '
                             f'(-1: none, 0: stem, k: stem and stages 1..k), got {frozen_stages!r}')
        if memory_placement not in MEMORY_PLACEMENTS:
            raise ValueError(f'memory_placement={memory_placement!r} is not supported; '
                             f'expected one of {MEMORY_PLACEMENTS}')
        if fusion not in FUSIONS:
            raise ValueError(f'fusion={fusion!r} is not supported; expected one of {FUSIONS}')
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.gap_before_final_norm = gap_before_final_norm
        memory_cfg = dict(
            head_dim=self.arch['head_dim'],
            chunk_size=self.arch['chunk_size'] if chunk_size is None else chunk_size,
            max_lr=self.arch['max_lr'] if max_lr is None else max_lr,
            read_mode=read_mode, memory_type=memory_type, chunks_per_group=chunks_per_group,
            grad_clip=grad_clip, center_keys=center_keys, global_query=global_query,
            compile=compile_memory)

        self.stem = STEMS[stem](in_channels, widths[0])
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        # Stages after the last requested output are not built: they would be unused parameters
        # under DDP (a pretrained checkpoint's weights for them are reported as unexpected keys).
        for i in range(self.out_indices[-1] + 1):
            start = sum(depths[:i])
            self.stages.append(ConvNeurStage(
                widths[i - 1] if i else widths[0], widths[i], depths[i], downsample=i > 0,
                drop_paths=dpr[start:start + depths[i]], memory_placement=memory_placement,
                memory_cfg=dict(memory_cfg, memory_dim=self.arch['memory_dim'][i]),
                with_cp=with_cp, fusion=fusion, gate_scale=float(gate_scale),
                kernel_size=kernel_size, mlp_ratio=mlp_ratio, use_grn=use_grn,
                layer_scale_init_value=layer_scale_init_value))
        # Output norms only for the requested stages: an unused norm would be an unused
        # parameter under DDP.
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(widths[i]))
        self.out_channels = tuple(widths[i] for i in self.out_indices)
        self._freeze_stages()

    # ----------------------------------------------------------------- arguments
    @classmethod
    def parse_arch(cls, arch):
        """The settings dict of a preset name or a custom arch dict, validated."""
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(f'arch={arch!r} is not a ConvNeur preset; expected one of '
                                 f'{sorted(cls.arch_zoo)} or a dict with keys {cls.arch_keys}')
            return copy.deepcopy(cls.arch_zoo[key])
        if isinstance(arch, dict):
            missing = [k for k in cls.arch_keys if k not in arch]
            if missing:
                raise ValueError(f'arch dict is missing keys {missing}; expected {cls.arch_keys}')
            arch = {k: arch[k] for k in cls.arch_keys}
            if isinstance(arch['memory_dim'], int):
                arch['memory_dim'] = (arch['memory_dim'],) * cls.num_stages
            for key in ('widths', 'depths', 'memory_dim'):
                if len(arch[key]) != cls.num_stages:
                    raise ValueError(f'arch {key} needs {cls.num_stages} entries (memory_dim may '
                                     f'also be one int for every stage), got {arch[key]!r}')
            return arch
        raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        if not isinstance(out_indices, (list, tuple)) or not out_indices:
            raise TypeError(f'out_indices must be an int or a non-empty sequence of ints, got '
                            f'{out_indices!r}')
        parsed = []
        for i in out_indices:
            if not isinstance(i, int) or not -self.num_stages <= i < self.num_stages:
                raise ValueError(f'out_indices entry {i!r} is out of range; accepted: '
                                 f'{-self.num_stages}..{self.num_stages - 1}')
            parsed.append(i % self.num_stages)
        if len(set(parsed)) != len(parsed):
            raise ValueError(f'out_indices {tuple(out_indices)!r} repeats a stage')
        return tuple(sorted(parsed))

    # ----------------------------------------------------------------- forward
    def forward(self, x):
        if not torch.is_tensor(x) or x.dim() != 4:
            raise ValueError(f'ConvNeur expects a (B, C, H, W) tensor, got '
                             f'{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'ConvNeur was built with in_channels={self.in_channels}, but the '
                             f'input has {x.shape[1]} channels (shape {tuple(x.shape)})')
        if not x.is_floating_point():
            raise TypeError(f'ConvNeur expects a floating-point image tensor, got {x.dtype} '
                            f'(normalise images first, as the data preprocessors do)')
        if x.shape[-1] < 1 or x.shape[-2] < 1:
            raise ValueError(f'ConvNeur needs an image of at least 1x1, got {tuple(x.shape)}')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                if self.gap_before_final_norm:
                    outs.append(norm(x.mean((2, 3))))
                else:
                    outs.append(norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # ----------------------------------------------------------------- training state
    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.stem] + list(self.stages[:self.frozen_stages])
        frozen += [getattr(self, f'norm{i}') for i in range(self.frozen_stages)
                   if i in self.out_indices]
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ----------------------------------------------------------------- weights
    def init_weights(self):
        """Random init from ``init_cfg`` (TruncNormal by default), then any ``Pretrained`` entry."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
        random_cfgs = [c for c in cfgs if c is not None and c not in pretrained]
        initialize(self, random_cfgs or self.default_init_cfg)
        # The gates start from a deliberate zero-weight / fixed-bias point that the layer-wise
        # init above overwrites.
        for m in self.modules():
            if isinstance(m, NeuralMemory):
                m._init_gates()
                if self.zero_init_memory:
                    nn.init.zeros_(m.proj.weight)
                if self.zero_init_memory or self.gate_bias_init:
                    nn.init.constant_(m.proj.bias, self.gate_bias_init)
        for cfg in pretrained:
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                            map_location=cfg.get('map_location', 'cpu'))
        self._is_init = True

    def get_layer_depth(self, param_name, prefix=''):
        """Layer id of a parameter for layer-wise learning-rate decay.

        The stem is layer 0, block j of stage i is layer 1 + sum(depths[:i]) + j, a stage's
        downsample and memory share the id of its first block, and everything else (output norms,
        heads, necks) gets the last id.

        Returns:
            tuple[int, int]: (layer id, number of layers).
        """
        depths = self.arch['depths']
        num_layers = sum(depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('stem.'):
            return 0, num_layers
        if name.startswith('stages.'):
            parts = name.split('.')
            stage = int(parts[1])
            first = 1 + sum(depths[:stage])
            if parts[2] == 'blocks':
                return first + int(parts[3]), num_layers
            return first, num_layers
        return num_layers - 1, num_layers



"""ConvNeur's global branch for other backbones: a memory gate that starts as the identity.

``MemoryGate`` is a plug-in layer (the slot of mmcv's ``ContextBlock`` and ``NonLocal2d`` in the
``plugins=`` of mmdet's and mmseg's ResNet). ``MemoryGated`` builds any registered backbone and
gates the outputs of the modules named in ``after`` (its stages, for example), for backbones whose
blocks take no plug-ins.
"""
import torch
import torch.nn as nn

from .neural_memory import NeuralMemory


class MemoryGate(nn.Module):
    """Gate a feature map with its neural-memory map: ``x * (1 + s * (2 * sigmoid(G) - 1))``.

    G is :class:`NeuralMemory`'s global map of x and s a per-channel scale (initialised to 1, where
    the gate is the paper's ``sigmoid(G)`` scaled so that a neutral gate passes x unchanged). The
    memory's output projection starts at zero, so G = 0 and the layer is the identity at
    initialisation: a pretrained backbone keeps its outputs until fine-tuning moves the projection.
    That is how GCNet's ``ContextBlock`` and ``NonLocal2d`` start too. Starting s at 0 instead
    (with G random) also gives the identity, but then each channel's gate can only open by
    lr per step, and it learnt about ten times slower in a fine-tuning test (docs/design.md).

    Args:
        in_channels (int): C.
        memory_dim (int | None): C_m; None takes C / 4 rounded down to a multiple of
            ``head_dim``, between ``head_dim`` and 128 (a bottleneck, as in the paper).
        head_dim (int): d. Default: 32.
        chunk_size (int): tokens per write. Default: 4096 (the paper's dense-prediction setting).
        max_lr (float): per-token inner step bound. Default: 1e-3 (the same).
        **memory_kwargs: other :class:`NeuralMemory` arguments (``read_mode``, ``memory_type``,
            ``chunks_per_group``, ``grad_clip``, ``center_keys``, ``global_query``, ``compile``).

    Shape:
        (B, C, H, W) -> (B, C, H, W).
    """

    _abbr_ = 'memory_gate'  # the name mmcv's build_plugin_layer gives it

    def __init__(self, in_channels, memory_dim=None, head_dim=32, chunk_size=4096, max_lr=1e-3,
                 **memory_kwargs):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels <= 0:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        if memory_dim is None:
            memory_dim = min(128, max(head_dim, in_channels // 4 // head_dim * head_dim))
        self.memory = NeuralMemory(in_channels, memory_dim, head_dim=head_dim,
                                   chunk_size=chunk_size, max_lr=max_lr, **memory_kwargs)
        self.scale = nn.Parameter(torch.ones(in_channels))
        self.reset_parameters()

    def reset_parameters(self):
        """The memory's own initialisation with a zero output projection, s = 1: call after a host
        re-initialises layers."""
        for m in self.memory.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.memory._init_gates()
        nn.init.zeros_(self.memory.proj.weight)
        nn.init.ones_(self.scale)

    def init_weights(self):
        """Called by OpenMMLab hosts after their own initialisers: restores the gate's init."""
        self.reset_parameters()

    def forward(self, x):
        gate = 2 * torch.sigmoid(self.memory(x)) - 1
        return x * (1 + self.scale.view(1, -1, 1, 1).to(x.dtype) * gate)


class _GateHook:
    """Forward hook that gates a module's output: an NCHW map, or (tokens (B, N, C), (H, W), ...).

    An object holding the gate, not a closure, so that ``copy.deepcopy`` of the model (EMA, for
    example) gives hooks that call the copied gates.
    """

    def __init__(self, gate, name):
        self.gate, self.name = gate, name

    def __call__(self, module, args, output):
        if torch.is_tensor(output) and output.dim() == 4:
            return self.gate(output)
        if isinstance(output, (tuple, list)) and len(output) >= 2 and torch.is_tensor(output[0]) \
                and output[0].dim() == 3 and isinstance(output[1], (tuple, list, torch.Size)) \
                and len(output[1]) == 2:
            tokens, (h, w) = output[0], output[1]
            B, N, C = tokens.shape
            gated = self.gate(tokens.transpose(1, 2).reshape(B, C, h, w))
            return type(output)((gated.flatten(2).transpose(1, 2), *output[1:]))
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise TypeError(f'MemoryGated: the output of {self.name!r} is {shape}; a gate needs an '
                        f'NCHW map or a (tokens (B, N, C), (H, W), ...) tuple. Name a module that '
                        f'returns one.')


class MemoryGated(nn.Module):
    """Any registered backbone with a :class:`MemoryGate` (or another plug-in layer) after each
    module named in ``after``.

    The gates are submodules of this wrapper (``gates.<name with '.' as '_'>``) and act through
    forward hooks on the named modules, so the wrapped backbone keeps its own module names, its
    ``init_cfg`` / Pretrained loading, ``frozen_stages``, ``norm_eval`` and ``out_indices``, and
    later stages see the gated maps. Every gate is the identity at initialisation.

    Args:
        backbone (dict): config of the backbone, built from the registry (e.g.
            ``dict(type='mmdet.ResNet', depth=18)``).
        after (list[str]): names of modules (``named_modules()``) whose outputs are gated; each
            must return an NCHW map or a (tokens, (H, W), ...) tuple, like mmdet's ResNet
            ``layer1``-``layer4``, mmpretrain's ConvNeXt ``stages.0``-``3``, the patch embeddings of
            PVTv2 (``layers.0.0``) or Swin's ``patch_embed`` and ``stages.0.downsample``.
        gate (dict): :class:`MemoryGate` arguments shared by all gates; with a ``type``, any
            registered plug-in layer built with ``in_channels`` instead, for example mmcv's
            ``dict(type='ContextBlock', ratio=1 / 4)`` (GCNet) or ``dict(type='NonLocal2d')``,
            to compare global branches at the same places. Such a layer must map an NCHW map to
            one of the same shape (both of those start as the identity, too).
        in_channels (list[int] | None): channels of each named output; None measures them with
            one forward pass of a 64x64 zero image at construction.

    Shape:
        what the wrapped backbone takes and returns.
    """

    def __init__(self, backbone, after, gate=None, in_channels=None):
        super().__init__()
        from mmengine.registry import MODELS
        self.backbone = MODELS.build(backbone)
        if isinstance(after, str) or not after:
            raise ValueError(f'after must be a non-empty list of module names, got {after!r}')
        modules = dict(self.backbone.named_modules())
        unknown = [n for n in after if n not in modules]
        if unknown:
            children = [n for n, _ in self.backbone.named_children()]
            raise ValueError(f'MemoryGated: {type(self.backbone).__name__} has no module(s) '
                             f'{unknown}; its top-level modules are {children}')
        if in_channels is None:
            in_channels = self._measure_channels(after)
        if len(in_channels) != len(after):
            raise ValueError(f'in_channels {in_channels} needs one entry per name in {after}')
        self.after = list(after)
        self.gates = nn.ModuleDict({n.replace('.', '_'): self._build_gate(gate or {}, c)
                                    for n, c in zip(after, in_channels)})
        for name in self.after:
            modules[name].register_forward_hook(_GateHook(self.gates[name.replace('.', '_')], name))

    @staticmethod
    def _build_gate(cfg, in_channels):
        if 'type' not in cfg:
            return MemoryGate(in_channels, **cfg)
        from mmengine.registry import MODELS
        return MODELS.build(dict(cfg, in_channels=in_channels))

    @torch.no_grad()
    def _measure_channels(self, after):
        modules = dict(self.backbone.named_modules())
        seen, handles = {}, []
        for name in after:
            def record(module, args, output, name=name):
                out = output if torch.is_tensor(output) else output[0]
                seen[name] = out.shape[1] if out.dim() == 4 else out.shape[-1]
            handles.append(modules[name].register_forward_hook(record))
        was_training = self.backbone.training
        self.backbone.eval()  # no batch-statistics updates
        try:
            self.backbone(torch.zeros(1, 3, 64, 64))
        finally:
            self.backbone.train(was_training)
            for h in handles:
                h.remove()
        missing = [n for n in after if n not in seen]
        if missing:
            raise ValueError(f'MemoryGated: {missing} did not run in a forward pass of '
                             f'{type(self.backbone).__name__}; name modules that it calls')
        return [int(seen[n]) for n in after]

    def init_weights(self):
        """The backbone's own initialisation (Pretrained included), then the gates' identity init."""
        if hasattr(self.backbone, 'init_weights'):
            self.backbone.init_weights()
        for g in self.gates.values():
            # MemoryGate and mmcv's ContextBlock re-initialise with reset_parameters,
            # NonLocal2d with init_weights
            (getattr(g, 'reset_parameters', None) or getattr(g, 'init_weights', lambda: None))()

    def get_layer_depth(self, param_name, prefix=''):
        """Layer id of a parameter for layer-wise lr decay, from the wrapped backbone's own
        ``get_layer_depth``; a gate takes the deepest id of the module it follows.

        Returns:
            tuple[int, int]: (layer id, number of layers).
        """
        if not hasattr(self.backbone, 'get_layer_depth'):
            raise TypeError(f'{type(self.backbone).__name__} has no get_layer_depth(), so '
                            f'MemoryGated cannot give layer depths for layer-wise lr decay')
        inner = prefix + 'backbone.'
        gates = prefix + 'gates.'
        if param_name.startswith(gates):
            key = param_name[len(gates):].split('.', 1)[0]
            name = self.after[[n.replace('.', '_') for n in self.after].index(key)]
            depths = [self.backbone.get_layer_depth(f'{name}.{n}') for n, _ in
                      dict(self.backbone.named_modules())[name].named_parameters()]
            if depths:
                return max(depths)
            return self.backbone.get_layer_depth(name)
        if param_name.startswith(inner):
            return self.backbone.get_layer_depth(param_name[len(inner):])
        return self.backbone.get_layer_depth(param_name, prefix)

    def forward(self, x):
        return self.backbone(x)

"""ConvNeur's global branch for other backbones: a memory gate that starts as the identity.

``MemoryGate`` is a plug-in layer (the slot of mmcv's ``ContextBlock`` and ``NonLocal2d`` in the
``plugins=`` of mmdet's and mmseg's ResNet). ``MemoryGated`` builds any registered backbone and
gates the outputs of the modules named in ``after`` (its stages, for example), or the updates of
the residual blocks in the modules named in ``blocks`` (as ConvNeur's stage memory does), for
backbones whose blocks take no plug-ins.
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

    def factor(self, x):
        """The gate ``1 + s * (2 * sigmoid(G) - 1)`` of x: (B, C, H, W) -> (B, C, H, W)."""
        gate = 2 * torch.sigmoid(self.memory(x)) - 1
        return 1 + self.scale.view(1, -1, 1, 1).to(x.dtype) * gate

    def forward(self, x):
        return x * self.factor(x)


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


class _BlockGateHooks:
    """Forward hooks that gate the residual blocks of one group (the children of a module).

    The first block that keeps its input map's shape reads the gate from that input x0; its
    output and every later block's, ``x + f(x)``, becomes ``x + gate(x0) * (output - x)``, as
    ConvNeur's blocks take their stage's gate. Blocks before it that change the shape (a ResNet
    layer's strided first block) pass unchanged; which block reads is fixed on the first pass.
    The gate lives only from the reading block's input to the last block's output, so a model
    holds no graph between forward passes (and can be deep-copied after one).
    """

    def __init__(self, gate, name, blocks):
        self.gate, self.name, self.blocks = gate, name, blocks
        self.reader = None
        self.factor = None

    def __call__(self, module, args, output):
        x = args[0]
        if not (torch.is_tensor(x) and x.dim() == 4):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise TypeError(f'MemoryGated: a block of {self.name!r} takes {shape}; block gates '
                            f'need NCHW maps')
        index = next(i for i, b in enumerate(self.blocks) if b is module)
        keeps = torch.is_tensor(output) and output.shape == x.shape
        if self.reader is None:
            if not keeps:
                if module is self.blocks[-1]:
                    raise TypeError(f'MemoryGated: no block of {self.name!r} keeps its input '
                                    f'map\'s shape; block gates need residual blocks')
                return None
            self.reader = index
        if index < self.reader:
            return None
        if not keeps:
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise TypeError(f'MemoryGated: block {index} of {self.name!r} maps {tuple(x.shape)} '
                            f'to {shape} after block {self.reader} has read the gate; a group\'s '
                            f'gated blocks must keep the map\'s shape')
        if index == self.reader:
            # cast once for the group, not once per block (a no-op outside autocast)
            self.factor = self.gate.factor(x).to(x.dtype)
        elif self.factor is None:
            raise RuntimeError(f'MemoryGated: block {index} of {self.name!r} ran without block '
                               f'{self.reader}, which reads the gate; a host that recomputes single '
                               f'blocks (with_cp) cannot take block gates')
        factor = self.factor
        if module is self.blocks[-1]:
            self.factor = None
        return torch.addcmul(x, factor, output - x)


class MemoryGated(nn.Module):
    """Any registered backbone with a :class:`MemoryGate` (or another plug-in layer) after each
    module named in ``after``, or on the blocks of each module named in ``blocks``.

    The gates are submodules of this wrapper (``gates.<name with '.' as '_'>``) and act through
    forward hooks on the named modules, so the wrapped backbone keeps its own module names, its
    ``init_cfg`` / Pretrained loading, ``frozen_stages``, ``norm_eval`` and ``out_indices``, and
    later stages see the gated maps. Every gate is the identity at initialisation.

    ``after`` gates a stage's map once. ``blocks`` is ConvNeur's own fusion: one memory reads the
    input x0 of a group's first block (the first that keeps the map's shape) and every block's
    update from there on is scaled by its gate,
    ``x + f(x) -> x + (1 + s * (2 * sigmoid(G(x0)) - 1)) * f(x)``, so the global map acts on each
    block's branch rather than on the stream once.

    Args:
        backbone (dict): config of the backbone, built from the registry (e.g.
            ``dict(type='mmdet.ResNet', depth=18)``).
        after (list[str]): names of modules (``named_modules()``) whose outputs are gated; each
            must return an NCHW map or a (tokens, (H, W), ...) tuple, like mmdet's ResNet
            ``layer1``-``layer4``, mmpretrain's ConvNeXt ``stages.0``-``3``, the patch embeddings of
            PVTv2 (``layers.0.0``) or Swin's ``patch_embed`` and ``stages.0.downsample``.
        blocks (list[str]): names of modules whose children are residual blocks on an NCHW
            map, like mmpretrain's ConvNeXt ``stages.0``-``3``, ConvNeur's ``stages.0.blocks``
            or ResNet's ``layer1``-``layer4``. The host must call the blocks one after another,
            each on the previous one's output, with the map as first argument. Blocks that
            change the map's shape may only come first (a ResNet layer's strided first block);
            they pass ungated, and the memory reads the input of the first block that keeps it.
        gate (dict): :class:`MemoryGate` arguments shared by all gates; with a ``type``, any
            registered plug-in layer built with ``in_channels`` instead, for example mmcv's
            ``dict(type='ContextBlock', ratio=1 / 4)`` (GCNet) or ``dict(type='NonLocal2d')``,
            to compare global branches at the same places. Such a layer must map an NCHW map to
            one of the same shape (both of those start as the identity, too).
        in_channels (list[int] | None): channels of each map gated, for the names in ``after``
            and then those in ``blocks``; None measures them with one forward pass of a 64x64
            zero image at construction.

    Shape:
        what the wrapped backbone takes and returns.
    """

    def __init__(self, backbone, after=(), gate=None, in_channels=None, blocks=()):
        super().__init__()
        from mmengine.registry import MODELS
        self.backbone = MODELS.build(backbone)
        for arg, names in (('after', after), ('blocks', blocks)):
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ValueError(f'{arg} must be a list of module names, got {names!r}')
        if not after and not blocks:
            raise ValueError(f'MemoryGated needs module names in after or blocks (a non-empty '
                             f'list of module names), got after={after!r}, blocks={blocks!r}')
        names = [*after, *blocks]
        if len(set(names)) < len(names):
            raise ValueError(f'MemoryGated: a module is named twice in after={list(after)} and '
                             f'blocks={list(blocks)}')
        modules = dict(self.backbone.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            children = [n for n, _ in self.backbone.named_children()]
            raise ValueError(f'MemoryGated: {type(self.backbone).__name__} has no module(s) '
                             f'{unknown}; its top-level modules are {children}')
        childless = [n for n in blocks if not len(modules[n]._modules)]
        if childless:
            raise ValueError(f'MemoryGated: blocks names modules whose children are the blocks, '
                             f'but {childless} have none')
        self.after, self.blocks, self._names = list(after), list(blocks), names
        if in_channels is None:
            in_channels = self._measure_channels()
        if len(in_channels) != len(names):
            raise ValueError(f'in_channels {in_channels} needs one entry per name in {names}')
        self.gates = nn.ModuleDict({n.replace('.', '_'): self._build_gate(gate or {}, c)
                                    for n, c in zip(names, in_channels)})
        for name in self.after:
            modules[name].register_forward_hook(_GateHook(self.gates[name.replace('.', '_')], name))
        for name in self.blocks:
            children = list(modules[name].children())
            hooks = _BlockGateHooks(self.gates[name.replace('.', '_')], name, children)
            for child in children:
                child.register_forward_hook(hooks)

    @staticmethod
    def _build_gate(cfg, in_channels):
        if 'type' not in cfg:
            return MemoryGate(in_channels, **cfg)
        from mmengine.registry import MODELS
        return MODELS.build(dict(cfg, in_channels=in_channels))

    @torch.no_grad()
    def _measure_channels(self):
        modules = dict(self.backbone.named_modules())
        seen, handles = {}, []
        for name in self.after:
            def record(module, args, output, name=name):
                out = output if torch.is_tensor(output) else output[0]
                seen[name] = out.shape[1] if out.dim() == 4 else out.shape[-1]
            handles.append(modules[name].register_forward_hook(record))
        for name in self.blocks:  # the input of the first block that keeps an NCHW map's shape
            def record_input(module, args, output, name=name):
                x = args[0] if args else None
                if name not in seen and torch.is_tensor(x) and x.dim() == 4 \
                        and torch.is_tensor(output) and output.shape == x.shape:
                    seen[name] = x.shape[1]
            handles += [child.register_forward_hook(record_input)
                        for child in modules[name].children()]
        was_training = self.backbone.training
        self.backbone.eval()  # no batch-statistics updates
        try:
            self.backbone(torch.zeros(1, 3, 64, 64))
        finally:
            self.backbone.train(was_training)
            for h in handles:
                h.remove()
        missing = [n for n in self.after if n not in seen]
        if missing:
            raise ValueError(f'MemoryGated: {missing} did not run in a forward pass of '
                             f'{type(self.backbone).__name__}; name modules that it calls')
        missing = [n for n in self.blocks if n not in seen]
        if missing:
            raise ValueError(f'MemoryGated: no child of {missing} ran in a forward pass of '
                             f'{type(self.backbone).__name__} keeping an NCHW map\'s shape; '
                             f'blocks names modules whose children are residual blocks')
        return [int(seen[n]) for n in self._names]

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
            name = self._names[[n.replace('.', '_') for n in self._names].index(key)]
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

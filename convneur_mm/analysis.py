"""Parameter and FLOP counting and the memory's write strength, shared by tools/analysis, the
benchmarks, the training hooks and the tests."""
import math

import torch
import torch.nn as nn

from .models import ConvNeur, NeuralMemory

# The paper's table (ImageNet-1K, 224x224, with the classification head).
PAPER_COMPLEXITY = {
    'm1': dict(params_m=4.3, flops_g=0.71, top1=75.4),
    'm2': dict(params_m=6.1, flops_g=1.0, top1=77.6),
    'm3': dict(params_m=10.6, flops_g=1.8, top1=80.0),
    'm4': dict(params_m=18.1, flops_g=3.06, top1=81.5),
}


class ConvNeurClassifier(nn.Module):
    """ConvNeur + linear head, the model of the paper's ImageNet table: (B, 3, H, W) -> (B, classes).

    The backbone pools and normalises (``gap_before_final_norm``), so this is the network that
    our mmpretrain configs build (ImageClassifier, no neck, LinearClsHead), without mmpretrain.
    """

    def __init__(self, arch='m2', num_classes=1000, **backbone_kwargs):
        super().__init__()
        self.backbone = ConvNeur(arch, out_indices=(3,), gap_before_final_norm=True,
                                 **backbone_kwargs)
        self.head = nn.Linear(self.backbone.out_channels[-1], num_classes)

    def forward(self, x):
        return self.head(self.backbone(x)[-1])


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def _attention_flops(inputs, outputs):
    # q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv): q k^T and the weighted sum of v.
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(i) for i in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model, shape=(1, 3, 224, 224)):
    """FLOPs of one forward pass by mmengine's FlopAnalyzer (one multiply-add = one FLOP).

    ``F.scaled_dot_product_attention`` (used by the transformer peers) is counted too: the
    analyzer has no handle for it and would silently leave attention out.
    """
    from mmengine.analysis import FlopAnalyzer
    model.eval()  # not ``model = model.eval()``: some OpenMMLab backbones' train() returns None
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, torch.zeros(shape))
        analyzer.set_op_handle('aten::scaled_dot_product_attention', _attention_flops)
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analyzer.total(), analyzer.by_module()


@torch.no_grad()
def memory_stats(model, inputs):
    """Per-memory diagnostics of one forward pass of ``inputs``.

    For every :class:`NeuralMemory` in ``model`` that the pass reaches (in module order):

    * ``write_strength``: ``||G - G_no-write|| / ||G||``, where G is the global map the memory
      returns and G_no-write the map recomputed from the same memory input with the write switched
      off (every token then reads the learned initial memory). Near 0, the memory carries no image
      context: each token gets a function of its own query only.
    * ``gate_mean``, ``gate_std``: of sigmoid(G), the gate the blocks multiply their local branch by.
    * ``step``, ``momentum``, ``decay``: token means of theta (in units of ``max_lr``), eta and alpha.
    * ``key_coherence``: the norm of the mean unit key, ``||mean_i k_i||``. Near 1, every token
      writes along one shared direction, so the write is an image-level sum more than a set of
      token-specific associations (0 with ``center_keys``).
    * ``query_alignment``: the mean ``|cos(q_i, mean_j k_j)|``: how much a query reads along
      that shared direction. Near 0, the queries look away from what was written (0 where there
      is no shared direction).

    Args:
        model (nn.Module): holds the memories; called as ``model(inputs)``, in its current mode.
        inputs: what the model is called with, e.g. a (B, 3, H, W) image batch.
    Returns:
        dict: memory module name (e.g. ``'stages.0.memory'``) -> dict of floats.
    """
    memories = [(n, m) for n, m in model.named_modules() if isinstance(m, NeuralMemory)]
    captured, handles = {}, []
    for name, mem in memories:
        handles.append(mem.register_forward_hook(
            lambda mod, args, out, n=name: captured.__setitem__(n, (args[0], out))))
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for name, mem in memories:
        if name not in captured:  # a memory the forward pass did not reach
            continue
        x, g = captured[name]
        tokens, q, k, _ = mem.project(x)
        logits = mem.gates(tokens).float()
        mean_key = k.float().mean(2, keepdim=True)  # (B, nh, 1, d)
        # a mean key shorter than 1e-4 (centred keys) has no direction to align with: 0
        direction = mean_key / mean_key.norm(dim=-1, keepdim=True).clamp_min(1e-4)
        alignment = (q.float() * direction).sum(-1).abs()
        mem.write, saved = False, mem.write
        try:
            g0 = mem(x)
        finally:
            mem.write = saved
        gate = torch.sigmoid(g.float())
        step, momentum, decay = torch.sigmoid(logits).chunk(3, dim=-1)
        stats[name] = dict(
            write_strength=float((g - g0).float().norm() / g.float().norm().clamp_min(1e-12)),
            gate_mean=float(gate.mean()), gate_std=float(gate.std()), step=float(step.mean()),
            momentum=float(momentum.mean()), decay=float(decay.mean()),
            key_coherence=float(mean_key.norm(dim=-1).mean()),
            query_alignment=float(alignment.mean()))
    return stats


def load_image(path, size=None, preprocessor=None):
    """An image file as the model sees it: (uint8 (H, W, 3) array, normalised (1, 3, H, W) tensor).

    ``size`` (H, W) resizes it first (bilinear); ``preprocessor`` is a config's
    ``data_preprocessor`` dict, whose ``mean`` and ``std`` (RGB) normalise it.
    """
    import numpy as np
    from PIL import Image
    image = Image.open(path).convert('RGB')
    if size:
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    mean = np.array((preprocessor or {}).get('mean', (0., 0., 0.)), np.float32)
    std = np.array((preprocessor or {}).get('std', (1., 1., 1.)), np.float32)
    x = torch.from_numpy((array - mean) / std).permute(2, 0, 1)[None].contiguous()
    return array.astype(np.uint8), x


def write_strength(model, inputs):
    """``||G - G_no-write|| / ||G||`` of every memory in ``model`` on ``inputs``: name -> float.

    See :func:`memory_stats`, which computes it with the other diagnostics.
    """
    return {n: s['write_strength'] for n, s in memory_stats(model, inputs).items()}

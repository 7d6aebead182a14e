"""Parameter and FLOP counting, shared by tools/analysis, the benchmarks and the tests."""
import math

import torch
import torch.nn as nn

from .models import ConvNeur

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

from mmengine.registry import MODELS as ROOT_MODELS

from ..registry import MODELS
from .convneur import ConvNeur, ConvNeurBlock
from .memory_gate import MemoryGate, MemoryGated
from .neural_memory import NeuralMemory

for _module in (ConvNeur, MemoryGate, MemoryGated):
    MODELS.register_module(module=_module)
    # Registered in mmengine's root registry too: mmdet's, mmseg's and mmpretrain's MODELS look up
    # unprefixed names in their ancestors, so type='ConvNeur' builds there without this package
    # importing any of them.
    ROOT_MODELS.register_module(module=_module)

__all__ = ['ConvNeur', 'ConvNeurBlock', 'MemoryGate', 'MemoryGated', 'NeuralMemory']

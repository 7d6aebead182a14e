from mmengine.registry import MODELS as ROOT_MODELS

from ..registry import MODELS
from .convneur import ConvNeur, ConvNeurBlock
from .neural_memory import NeuralMemory

MODELS.register_module(module=ConvNeur)
# Registered in mmengine's root registry too: mmdet's, mmseg's and mmpretrain's MODELS look up
# unprefixed names in their ancestors, so type='ConvNeur' builds there without this package
# importing any of them.
ROOT_MODELS.register_module(module=ConvNeur)

__all__ = ['ConvNeur', 'ConvNeurBlock', 'NeuralMemory']

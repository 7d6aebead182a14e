"""ConvNeur for OpenMMLab 2.0.

``import convneur_mm`` (or ``custom_imports=dict(imports=['convneur_mm'])``) registers the
backbone and the layer-decay optimizer constructor; it needs torch and mmengine only.
"""
from .checkpoint import allow_mmengine_checkpoint_types
from .engine import LayerDecayOptimWrapperConstructor
from .models import ConvNeur, MemoryGate, MemoryGated, NeuralMemory
from .version import __version__

allow_mmengine_checkpoint_types()

__all__ = ['ConvNeur', 'MemoryGate', 'MemoryGated', 'NeuralMemory',
           'LayerDecayOptimWrapperConstructor', '__version__']

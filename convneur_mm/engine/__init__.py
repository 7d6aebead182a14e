from .hooks import RNGStateHook
from .layer_decay import LayerDecayOptimWrapperConstructor
from .wrappers import CPUDistributedDataParallel

__all__ = ['CPUDistributedDataParallel', 'LayerDecayOptimWrapperConstructor', 'RNGStateHook']

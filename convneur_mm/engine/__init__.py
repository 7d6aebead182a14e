from .hooks import MemoryStatsHook, RNGStateHook
from .layer_decay import LayerDecayOptimWrapperConstructor
from .wrappers import CPUDistributedDataParallel

__all__ = ['CPUDistributedDataParallel', 'LayerDecayOptimWrapperConstructor', 'MemoryStatsHook',
           'RNGStateHook']

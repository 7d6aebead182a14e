"""The ``convneur_mm`` registry scope.

Child nodes of mmengine's root registries, so any OpenMMLab codebase can build our modules with a
scope prefix (``type='convneur_mm.ConvNeur'``): mmengine imports this module when it meets the
prefix, and the nodes import their ``locations`` on first use.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='convneur_mm',
                  locations=['convneur_mm.models', 'convneur_mm.testing'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='convneur_mm', locations=['convneur_mm.engine'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='convneur_mm',
                 locations=['convneur_mm.engine', 'convneur_mm.testing'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope='convneur_mm',
                          locations=['convneur_mm.engine'])

import random

import numpy as np
import torch
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the random generators' states in each checkpoint and restore them when resuming.

    mmengine 0.10 re-seeds on resume, so a resumed run draws different random numbers (RoI
    sampling, drop path, main-process augmentation) from an uninterrupted one. With this hook
    and a fixed seed, a run killed and resumed ends with the same weights as one never stopped.

    The states are applied before the first iteration after resuming, after the training loop
    has fast-forwarded its data loader over the iterations already done.
    """

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['rng_state'] = dict(
            python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])

    def after_load_checkpoint(self, runner, checkpoint):
        self._pending = checkpoint.get('rng_state')
        if self._pending is None:
            runner.logger.warning('the checkpoint holds no random generator states (saved '
                                  'without RNGStateHook); the resumed run re-seeds instead')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        random.setstate(state['python'])
        np.random.set_state(state['numpy'])
        torch.set_rng_state(state['torch'])
        if state['cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])

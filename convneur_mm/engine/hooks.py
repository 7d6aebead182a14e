import random

import numpy as np
import torch
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class MemoryStatsHook(Hook):
    """Log the neural memories' diagnostics every ``interval`` training iterations.

    On the first ``num_images`` images of the current batch, in eval mode and without gradients,
    :func:`convneur_mm.analysis.memory_stats` gives per memory its write strength, the mean and
    spread of its gate sigmoid(G), its mean step, momentum and decay, and how much its keys and
    queries share one direction (key coherence, query alignment). They go to the visualizer's
    backends (``vis_data/scalars.json``, TensorBoard, ...) as
    ``memory/<stage>/<stat>`` scalars at the current iteration, and the write strengths to the log.
    ``tools/analysis/plot_memory_stats.py WORK_DIR`` plots them.

    Args:
        interval (int): iterations between two measurements. Default: 50.
        num_images (int): images of the batch used. Default: 2.
    """

    def __init__(self, interval=50, num_images=2):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be a positive int, got {interval!r}')
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f'num_images must be a positive int, got {num_images!r}')
        self.interval = interval
        self.num_images = num_images
        self._has_memory = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if data_batch is None or not self.every_n_train_iters(runner, self.interval):
            return
        from ..analysis import memory_stats
        from ..models import NeuralMemory
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        backbone = getattr(model, 'backbone', model)
        if self._has_memory is None:
            self._has_memory = any(isinstance(m, NeuralMemory) for m in backbone.modules())
            if not self._has_memory:
                # a peer trained with the same recipe: nothing to measure, no empty log lines
                runner.logger.info('MemoryStatsHook: the backbone has no NeuralMemory; '
                                   'nothing to log')
        if not self._has_memory:
            return
        inputs = model.data_preprocessor(data_batch, False)['inputs']
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs[:self.num_images]))
        was_training = backbone.training
        backbone.eval()
        try:
            stats = memory_stats(backbone, inputs[:self.num_images])
        finally:
            backbone.train(was_training)
        scalars = {}
        for name, values in stats.items():
            short = name.replace('stages.', 's').replace('.blocks.', '.b').replace('.memory', '')
            scalars.update({f'memory/{short}/{k}': v for k, v in values.items()})
        runner.visualizer.add_scalars(scalars, step=runner.iter + 1)
        runner.logger.info('memory write strength: ' + ', '.join(
            f'{k.split("/")[1]} {v:.1%}' for k, v in scalars.items() if k.endswith('write_strength')))


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

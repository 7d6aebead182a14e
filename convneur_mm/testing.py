"""Small synthetic batches, a one-step training check, a parameter dump and a recorder of the
memory state's dtype, for tests; a pooling neck for the comparison with peers
(tools/compare_real.py).

Each builder imports its OpenMMLab task package only when called, so importing this module does not.
"""
import os.path as osp

import torch
import torch.nn as nn
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook

from .registry import HOOKS, MODELS


@MODELS.register_module()
class PoolMaps(nn.Module):
    """Classification neck: global average pooling of every map of a list or a tuple.

    mmpretrain's GlobalAveragePooling accepts only tuples, and mmdet's PVTv2 returns a list.

    Shape: sequence of (B, C_i, H_i, W_i) -> tuple of (B, C_i).
    """

    def forward(self, inputs):
        return tuple(x.mean((2, 3)) for x in inputs)


def record_state_dtypes(memory):
    """The dtypes of ``memory``'s fast weights (a :class:`NeuralMemory`), one per forward pass
    from now on: the list they are appended to, for checking that the state stays fp32 under
    autocast or half weights."""
    seen, initial_state = [], memory.memory.initial_state

    def record(*args):
        weights = initial_state(*args)
        seen.append(weights[0].dtype)
        return weights
    memory.memory.initial_state = record
    return seen


def det_batch(size, num_images=1, labels=(0, 1)):
    """An mmdet batch: ``num_images`` random (3, size, size) images with two boxes/masks each."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(num_images):
        boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]) * size
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        sample = DetDataSample(metainfo=dict(
            img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
            scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor(labels),
                                           masks=BitmapMasks(masks.numpy(), size, size))
        inputs.append(torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def seg_batch(size, num_images=2, num_classes=150):
    """An mmseg batch: random images with random (1, size, size) label maps.

    Two images by default: UperNet's pyramid pooling has a 1x1 BatchNorm that cannot train on one.
    """
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(num_images):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, size, size), generator=gen))
        inputs.append(torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def cls_batch(size, num_images=2):
    """An mmpretrain batch: ``num_images`` random images labelled 0, 1, ..."""
    from mmpretrain.structures import DataSample

    gen = torch.Generator().manual_seed(0)
    return dict(inputs=[torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=gen)
                        for _ in range(num_images)],
                data_samples=[DataSample().set_gt_label(i) for i in range(num_images)])


def run_train_step(model, batch, optim_wrapper=None, check_backbone=False):
    """One ``model.train_step`` on CPU; checks the loss is finite and the weights moved.

    Returns the step's log variables (a dict of floats).
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import OptimWrapper

    model = revert_sync_batchnorm(model)  # as mmengine's Runner does outside DDP
    model.train()
    if optim_wrapper is None:
        optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3))
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    log_vars = model.train_step(batch, optim_wrapper)
    loss = float(log_vars['loss'].detach())
    if not torch.isfinite(torch.tensor(loss)):
        raise AssertionError(f'non-finite training loss {loss}: {log_vars}')
    moved = [n for n, p in before.items() if not torch.equal(p, params[n])]
    if not moved:
        raise AssertionError('no parameter changed after a training step')
    if check_backbone and not any(n.startswith('backbone.') for n in moved):
        raise AssertionError('the backbone did not change after a training step')
    return {k: float(v) for k, v in log_vars.items()}


@HOOKS.register_module()
class DumpParametersHook(Hook):
    """At the end of training, each rank saves its parameters to work_dir/parameters_rank<r>.pth,
    so a test can check that distributed replicas stayed identical."""

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save(dict(rank=get_rank(), world_size=get_world_size(),
                        parameters={n: p.detach().cpu() for n, p in model.named_parameters()}),
                   osp.join(runner.work_dir, f'parameters_rank{get_rank()}.pth'))

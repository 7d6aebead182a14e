"""Checkpoint loading: mmengine checkpoints on torch >= 2.6, and pretrained backbone weights.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, an unpickler that only builds
allowlisted types. mmengine 0.10.7 saves a few types outside that list in every checkpoint (the
message hub's :class:`HistoryBuffer` and the numpy arrays and scalars inside it), so resuming and
loading its checkpoints fail with ``Unsupported global``. Rather than turning ``weights_only`` off
(which lets a checkpoint run arbitrary code), :func:`allow_mmengine_checkpoint_types` adds exactly
those types to torch's allowlist.

One reference needs care: a HistoryBuffer pickles its statistics methods as
``getattr(HistoryBuffer, 'min')`` (pickle protocol 2), and allowing ``getattr`` itself would let a
checkpoint walk from any allowed type to arbitrary code. ``builtins.getattr`` is therefore mapped to
:func:`_history_buffer_getattr`, which resolves those few names and refuses everything else.
"""
import os.path as osp
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import CheckpointLoader


def _numpy_types():
    # Everything numpy's pickling of arrays, dtypes and scalars refers to.
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    types = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    for name in ('bool_', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
                 'float16', 'float32', 'float64', 'complex64', 'complex128', 'str_', 'bytes_'):
        scalar = getattr(np, name)
        types += [scalar, type(np.dtype(scalar))]
    return types


_HISTORY_BUFFER_STATISTICS = frozenset({'min', 'max', 'current', 'mean'})


def _history_buffer_getattr(obj, name):
    """The only ``getattr`` a weights-only load may run: HistoryBuffer's statistics methods."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'weights-only load refused getattr({getattr(obj, "__name__", type(obj).__name__)}, '
        f'{name!r}): only HistoryBuffer statistics may be looked up this way')


def allow_mmengine_checkpoint_types():
    """Allow the types mmengine stores in its checkpoints in ``torch.load(weights_only=True)``."""
    if hasattr(torch.serialization, 'add_safe_globals'):  # torch >= 2.4
        torch.serialization.add_safe_globals(
            [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_types())


def _state_dict_of(ckpt, filename):
    if isinstance(ckpt, dict):
        for key in ('state_dict', 'model'):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return ckpt
    raise ValueError(f'{filename!r} holds no state dict: expected a dict of tensors or a dict '
                     f'with a "state_dict" or "model" entry, got {type(ckpt).__name__}')


def last_checkpoint(work_dir):
    """The checkpoint that a training work directory's ``last_checkpoint`` file names.

    mmengine writes the path as it was at save time, so a work directory moved since (an archive,
    another machine) is looked up by file name beside the pointer.

    Raises:
        FileNotFoundError: the directory has no ``last_checkpoint`` file, or the checkpoint it
            names is neither at that path nor in the directory.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        raise FileNotFoundError(f'{work_dir}: no last_checkpoint file; has the run saved a '
                                f'checkpoint?')
    with open(pointer) as f:
        checkpoint = f.read().strip()
    if not osp.isfile(checkpoint):
        checkpoint = osp.join(work_dir, osp.basename(checkpoint))
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'{work_dir}: last_checkpoint names '
                                f'{osp.basename(checkpoint)!r}, which is not in the work directory')
    return checkpoint


def load_pretrained(module, filename, prefix=None, map_location='cpu'):
    """Load ``filename`` into ``module`` non-strictly, reporting what did not match.

    Args:
        module (nn.Module): the model to load into.
        filename (str): local path or any URI mmengine's ``CheckpointLoader`` understands.
        prefix (str | None): keep only keys starting with it and strip it, e.g. ``'backbone.'``
            to feed a classifier checkpoint to a detector's backbone.
        map_location (str): passed to ``torch.load``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as a checkpoint, or no key of it (after the prefix)
            matches a parameter or buffer of ``module`` with the same shape.
    """
    try:
        ckpt = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    except FileNotFoundError as e:
        raise FileNotFoundError(f'pretrained checkpoint {filename!r} does not exist') from e
    except Exception as e:  # corrupt or not a torch file: say which file and why
        raise ValueError(f'cannot read pretrained checkpoint {filename!r}: '
                         f'{type(e).__name__}: {e}') from e
    state = _state_dict_of(ckpt, filename)
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    if prefix:
        all_keys = list(state)
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f'no key of {filename!r} starts with prefix={prefix!r}; its keys look '
                             f'like {all_keys[:3]} (use prefix=None for a bare backbone file)')
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if not matched:
        raise ValueError(
            f'pretrained checkpoint {filename!r} (prefix={prefix!r}) shares no tensor with '
            f'{type(module).__name__}: its keys look like {list(state)[:3]}, the model\'s like '
            f'{list(own)[:3]}' + (f'; shape mismatches: {mismatched[:3]}' if mismatched else ''))
    module.load_state_dict(matched, strict=False)
    missing = [k for k in own if k not in matched]
    unexpected = [k for k in state if k not in own]
    print_log(f'loaded {len(matched)}/{len(own)} tensors of {type(module).__name__} from '
              f'{filename}' + (f' (prefix {prefix!r})' if prefix else ''), logger='current')
    for what, keys in (('missing keys (left at their initial values)', missing),
                       ('unexpected keys (ignored)', unexpected),
                       ('shape mismatches (left at their initial values)', mismatched)):
        if keys:
            print_log(f'{what}: {len(keys)}: ' + ', '.join(keys[:20])
                      + (' ...' if len(keys) > 20 else ''), logger='current', level=30)

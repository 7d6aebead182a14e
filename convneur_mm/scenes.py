"""Fashion-MNIST scenes: canvases of real photographs, for the scenes benchmark and for the
global-context probes of the neural memory.

Two composers, one place for their rules:

* :func:`compose_scene` paints the benchmark scenes of ``data/fashion_scenes``
  (``tools/prepare_data.py``): 4-12 items at 1.5-3.5x, little overlap, one class per item.
* :func:`compose_task_scene` paints the global-context tasks (``tools/global_context.py``):
  items at 2x with no overlap, labelled by a rule over the whole scene.

Both draw photographs from :func:`split_pools`: training scenes from the 60k training images,
validation scenes from test images 0-4999 and test scenes from 5000-9999, so no photograph is
shared between splits. The probes (:class:`Probe`, :class:`OracleProbe`), their training loop
(:func:`train_probe`), their evaluation (:func:`evaluate_probe`) and the memory's response to the
marker (:func:`marker_response`) live here too, so the tools only choose models and runs.

Needs numpy, torch and PIL; nothing of OpenMMLab.
"""
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                   'Sneaker', 'Bag', 'Ankle boot')
SILHOUETTE = 25  # a photograph's pixels above this grey level are the item, the rest background

# the benchmark scenes
SCENE_SIZES = (256, 320, 384, 448, 512)
SCENE_ITEMS = (4, 12)        # items per scene, before the ones that do not fit
SCENE_SCALES = (1.5, 3.5)    # item side = 28 px times this
SCENE_MAX_OVERLAP = 0.2      # of the smaller box, between any two items

# the global-context tasks
TASKS = {'marker': 'scene accuracy', 'odd': 'odd-item accuracy'}
ITEM_SCALE = 2
MARKER = 12  # the marker's side in pixels
IGNORE = 255  # the label the probes' training loss skips (``marker_label=IGNORE``)


class Pool:
    """Images (n, 28, 28) uint8 and labels (n,) that one split's scenes draw from."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.by_class = [np.nonzero(labels == c)[0] for c in range(10)]


def split_pools(arrays):
    """``{'train': Pool, 'val': Pool, 'test': Pool}`` from ``{'train': (images, labels), 't10k':
    (images, labels)}`` (``tools/prepare_data.py``'s ``load_fashion_mnist``)."""
    test_images, test_labels = arrays['t10k']
    return dict(train=Pool(*arrays['train']), val=Pool(test_images[:5000], test_labels[:5000]),
                test=Pool(test_images[5000:], test_labels[5000:]))


# ----------------------------------------------------------------------------- benchmark scenes
def compose_scene(rng, pool, size):
    """One benchmark scene from ``pool``.

    Returns the (size, size) uint8 canvas and a list of (class, visible mask) per item, in paint
    order (a later item hides what it covers of an earlier one).
    """
    from PIL import Image
    canvas = np.zeros((size, size), np.uint8)
    owner = np.zeros((size, size), np.int16)  # 1 + index of the item that shows at a pixel
    boxes, items = [], []
    for _ in range(rng.integers(SCENE_ITEMS[0], SCENE_ITEMS[1] + 1)):
        side = int(round(28 * rng.uniform(*SCENE_SCALES)))
        for _ in range(50):
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if all(_overlap((y, x, side), b) <= SCENE_MAX_OVERLAP for b in boxes):
                break
        else:
            continue  # no room left for an item of this size
        index = int(rng.integers(len(pool.images)))
        patch = np.asarray(Image.fromarray(pool.images[index]).resize((side, side), Image.BILINEAR))
        silhouette = patch > SILHOUETTE
        canvas[y:y + side, x:x + side][silhouette] = patch[silhouette]
        owner[y:y + side, x:x + side][silhouette] = len(items) + 1
        boxes.append((y, x, side))
        items.append(int(pool.labels[index]))
    return canvas, [(c, owner == i + 1) for i, c in enumerate(items)]


def _overlap(a, b):
    """Intersection of two squares (y, x, side), as a fraction of the smaller one."""
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(dy, 0) * max(dx, 0) / min(a[2], b[2]) ** 2


# ----------------------------------------------------------------------------- global-context tasks
def _place(rng, size, sides, gap=4, tries=500):
    """Top-left corners of non-overlapping squares of the given sides (fewer if they do not fit)."""
    placed = []
    for side in sides:
        for _ in range(tries):
            y, x = rng.integers(0, size - side + 1, 2)
            if all(y + side + gap <= py or py + ps + gap <= y or x + side + gap <= px
                   or px + ps + gap <= x for py, px, ps in placed):
                placed.append((int(y), int(x), side))
                break
    return placed


def compose_task_scene(rng, pool, task, size=512, num_items=8, marker_side=MARKER,
                       marker_label=0):
    """One global-context scene: (image (S, S, 3) uint8, labels (S, S) uint8, instances (S, S)
    int16, info). Labels are 0 (background), 1 or 2:

    * ``marker``: half the scenes hold a red cross of side ``marker_side``; every item pixel is 1
      if the scene holds it, else 2. The cross's own pixels get ``marker_label``: 0, background,
      or ``IGNORE``, which the training loss skips.
    * ``odd``: all items but one share a class; the odd item is 1, the others 2.
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {list(TASKS)}, got {task!r}')
    if marker_label not in (0, IGNORE):
        raise ValueError(f'marker_label must be 0 (background) or IGNORE ({IGNORE}), '
                         f'got {marker_label!r}')
    side = 28 * ITEM_SCALE
    if task == 'odd':  # the last photograph is the odd one
        common, odd_class = rng.choice(10, 2, replace=False)
        index = list(rng.choice(pool.by_class[common], num_items - 1)) + \
            [rng.choice(pool.by_class[odd_class])]
    else:
        index = list(rng.choice(len(pool.images), num_items))
    marker = task == 'marker' and bool(rng.random() < 0.5)
    boxes = _place(rng, size, [marker_side] * marker + [side] * num_items)
    image = np.zeros((size, size, 3), np.uint8)
    labels = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int16)
    if marker:
        y, x, _ = boxes.pop(0)
        m, arm = marker_side, max(4, marker_side // 3)  # arms a third of the side, >= 4 px
        cross = np.zeros((m, m), bool)
        cross[(m - arm) // 2:(m + arm) // 2] = cross[:, (m - arm) // 2:(m + arm) // 2] = True
        image[y:y + m, x:x + m][cross] = (255, 0, 0)
        labels[y:y + m, x:x + m][cross] = marker_label
    # where fewer items found a place, the odd photograph still goes to the last one placed
    index = index[:len(boxes) - 1] + index[-1:] if task == 'odd' else index[:len(boxes)]
    odd = len(boxes) - 1 if task == 'odd' else -1
    for j, (y, x, _) in enumerate(boxes):
        patch = np.kron(pool.images[index[j]], np.ones((ITEM_SCALE, ITEM_SCALE), np.uint8))
        mask = patch > SILHOUETTE
        image[y:y + side, x:x + side][mask] = patch[mask][:, None]
        instances[y:y + side, x:x + side][mask] = j + 1
        label = (1 if marker else 2) if task == 'marker' else (1 if j == odd else 2)
        labels[y:y + side, x:x + side][mask] = label
    return image, labels, instances, dict(marker=marker, odd=odd + 1)


def to_input(images):
    """(n, S, S, 3) uint8 scenes -> the normalised (n, 3, S, S) float input of the probes."""
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() - 64.0) / 96.0


def task_batch(rng, pool, task, n, size, marker_side=MARKER, marker_label=0):
    """n scenes: the (n, 3, S, S) input, stride-4 labels and instances, and the infos."""
    scenes = [compose_task_scene(rng, pool, task, size, marker_side=marker_side,
                                 marker_label=marker_label) for _ in range(n)]
    # labels sampled at the centre of every 4 x 4 cell, where the head predicts
    labels = torch.from_numpy(np.stack([s[1][2::4, 2::4] for s in scenes])).long()
    instances = torch.from_numpy(np.stack([s[2][2::4, 2::4] for s in scenes])).long()
    return to_input([s[0] for s in scenes]), labels, instances, [s[3] for s in scenes]


# ----------------------------------------------------------------------------- probes
class Probe(nn.Module):
    """A backbone + a light dense head (a 1x1 conv per map, upsampled to stride 4 and summed):
    (B, 3, S, S) -> (B, num_classes, S/4, S/4) logits."""

    def __init__(self, backbone, channels, width=64, num_classes=3):
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.logits(self.hidden(x), x)

    def logits(self, hidden, x):
        """The class logits from the head input ``hidden`` (``x``: the input, unused here)."""
        return self.cls(F.gelu(hidden))

    def hidden(self, x):
        feats = self.backbone(x)
        size = (-(-x.shape[-2] // 4), -(-x.shape[-1] // 4))
        return sum(F.interpolate(lat(f), size=size, mode='bilinear', align_corners=False)
                   for lat, f in zip(self.lateral, feats))


class OracleProbe(Probe):
    """A probe whose head also gets one global number per image: the largest red-minus-green
    value, which tells a scene with the (red) marker from one without. Not a model: a check that
    the task and the training loop work once the global bit reaches the head."""

    def __init__(self, backbone, channels, width=64, num_classes=3):
        super().__init__(backbone, channels, width, num_classes)
        self.oracle = nn.Conv2d(1, width, 1)

    def logits(self, hidden, x):
        bit = (x[:, 0] - x[:, 1]).amax((1, 2)).view(-1, 1, 1, 1).expand(-1, 1, *hidden.shape[-2:])
        return self.cls(F.gelu(hidden + self.oracle(bit)))


@torch.no_grad()
def evaluate_probe(model, pool, task, split_id, size, num_scenes, batch=8, marker_side=MARKER):
    """Scene-level accuracy (``TASKS[task]``) and item-pixel accuracy on ``num_scenes`` scenes
    that depend only on ``split_id`` and their index, so every run sees the same ones."""
    model.eval()
    correct = total = pix_correct = pix_total = 0
    for start in range(0, num_scenes, batch):
        n = min(batch, num_scenes - start)
        scenes = [compose_task_scene(np.random.default_rng([split_id, start + i]), pool, task,
                                     size, marker_side=marker_side) for i in range(n)]
        logits = model(to_input([s[0] for s in scenes]))
        margin = logits[:, 1] - logits[:, 2]
        for (_, labels, instances, info), m, lg in zip(scenes, margin, logits):
            labels = torch.from_numpy(labels[2::4, 2::4]).long()
            instances = torch.from_numpy(instances[2::4, 2::4]).long()
            item = labels > 0
            pix_correct += int((lg.argmax(0)[item] == labels[item]).sum())
            pix_total += int(item.sum())
            if task == 'marker':  # the majority of a scene's item pixels decides
                said = bool((m[item] > 0).float().mean() > 0.5) if item.any() else False
                correct += said == info['marker']
            else:  # the item with the largest mean 1-vs-2 margin is taken as the odd one
                ids = instances[item]
                means = torch.zeros(int(ids.max()) + 1).index_add_(0, ids, m[item])
                means /= torch.bincount(ids, minlength=means.numel()).clamp_min(1)
                means[0] = -math.inf
                correct += int(means.argmax()) == info['odd']
            total += 1
    model.train()
    return dict(accuracy=correct / total, item_pixel_accuracy=pix_correct / max(pix_total, 1))


def _write_strength(model, x):
    from .analysis import write_strength
    model.eval()
    try:
        return write_strength(model.backbone, x)
    finally:
        model.train()


def _save_run_state(path, model, opt, sched, rng, progress):
    """Write what :func:`train_probe` needs to continue a run; the curves (plain numbers) go as
    JSON, so the file loads with ``weights_only``."""
    torch.save(dict(model=model.state_dict(), optimizer=opt.state_dict(),
                    scheduler=sched.state_dict(), torch_rng=torch.get_rng_state(),
                    numpy_rng=json.dumps(rng.bit_generator.state), progress=json.dumps(progress)),
               path + '.tmp')
    os.replace(path + '.tmp', path)  # a run killed while saving keeps its previous checkpoint


def _load_run_state(path, model, opt, sched, rng):
    """Restore a run from ``path`` into the given objects; its progress dict, or None when there
    is no file."""
    if not path or not os.path.exists(path):
        return None
    saved = torch.load(path, map_location='cpu', weights_only=True)
    try:
        model.load_state_dict(saved['model'])
        opt.load_state_dict(saved['optimizer'])
        sched.load_state_dict(saved['scheduler'])
    except (KeyError, RuntimeError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RuntimeError(f'checkpoint {path} is not one of this run (another model or code '
                           f'version?): {first} Delete it to train the run from the start.'
                           ) from error
    torch.set_rng_state(saved['torch_rng'])
    rng.bit_generator.state = json.loads(saved['numpy_rng'])
    progress = json.loads(saved['progress'])
    # JSON turned the (iteration, value) pairs into lists
    for key in ('loss_curve', 'val_curve', 'track_curve'):
        progress[key] = [tuple(pair) for pair in progress[key]]
    return progress


def train_probe(model, pools, task, rng, *, iters, batch, size, lr, marker_side=MARKER,
                marker_label=0, eval_scenes=256, eval_every=200, log_every=50, track=None,
                tag='', checkpoint=None, checkpoint_every=100):
    """Train ``model`` on ``task`` scenes drawn by ``rng`` from ``pools['train']`` with AdamW
    (weight decay 0.05 on weight matrices), a linear warm-up over a tenth of the run, cosine
    decay and a gradient clip at norm 5. Prints progress; returns the loss and validation curves,
    the final validation and test accuracies and the memories' write strength before and after.

    ``marker_label`` labels the cross's pixels in the training scenes (``compose_task_scene``);
    evaluation scores item pixels only, so it does not depend on it.

    ``track(model)``, if given, is called at initialisation and at every log step; its results
    are returned as ``track_curve`` [(iteration, result)]. It must leave the model's mode and
    every random state as it found them, so that tracking does not change the run.

    ``checkpoint``, a file path, makes the run resumable: every ``checkpoint_every`` iterations
    the model, optimiser, schedule, both random states and the curves so far are written there
    (atomically), and a call that finds the file continues from it. With the same thread count the
    resumed run is the uninterrupted one, bit for bit. The file is left for the caller to delete
    once the result is stored.
    """
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f'checkpoint_every must be an int >= 1, got {checkpoint_every!r}')
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and 'initial' not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim > 1 and 'initial' not in n)]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.05),
                             dict(params=other, weight_decay=0.0)], lr=lr)
    warmup = max(1, iters // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, i / iters))))
    probe_x = task_batch(np.random.default_rng([9, 9]), pools['val'], task, 2, size,
                         marker_side)[0]
    state = _load_run_state(checkpoint, model, opt, sched, rng)
    if state is None:
        state = dict(iteration=0, seconds=0.0, running=None, loss_curve=[], val_curve=[],
                     strength_init=_write_strength(model, probe_x),
                     track_curve=[(0, track(model))] if track else [])
    else:
        print(f'[{tag}] resumed at iteration {state["iteration"]}/{iters} from {checkpoint}',
              flush=True)
    curve, val_curve, track_curve = state['loss_curve'], state['val_curve'], state['track_curve']
    running, t0 = state['running'], time.perf_counter() - state['seconds']
    for it in range(state['iteration'], iters):
        x, labels, _, _ = task_batch(rng, pools['train'], task, batch, size, marker_side,
                                     marker_label)
        loss = F.cross_entropy(model(x), labels, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if (it + 1) % log_every == 0 or it + 1 == iters:
            curve.append((it + 1, running))
            print(f'[{tag}] iter {it + 1}/{iters} loss {running:.4f} '
                  f'({(time.perf_counter() - t0) / (it + 1):.2f} s/iter)', flush=True)
            if track:
                track_curve.append((it + 1, track(model)))
        if eval_every and (it + 1) % eval_every == 0 and it + 1 < iters:
            # a smaller validation set than the final one: the learning curve, not the result
            acc = evaluate_probe(model, pools['val'], task, 1, size, 64, batch,
                                 marker_side)['accuracy']
            val_curve.append((it + 1, acc))
            print(f'[{tag}] iter {it + 1}: accuracy on 64 validation scenes {acc:.3f}', flush=True)
        if checkpoint and (it + 1) % checkpoint_every == 0 and it + 1 < iters:
            state.update(iteration=it + 1, seconds=time.perf_counter() - t0, running=running)
            _save_run_state(checkpoint, model, opt, sched, rng, state)
    seconds = time.perf_counter() - t0
    return dict(seconds=seconds, loss_curve=curve, val_curve=val_curve, track_curve=track_curve,
                val=evaluate_probe(model, pools['val'], task, 1, size, eval_scenes, batch,
                                   marker_side),
                test=evaluate_probe(model, pools['test'], task, 2, size, eval_scenes, batch,
                                    marker_side),
                write_strength_init=state['strength_init'],
                write_strength_final=_write_strength(model, probe_x))


def _marker_pairs(pool, size, marker_side, num_scenes):
    """The first ``num_scenes`` marker scenes of a fixed sequence: (scene, the scene with its
    cross erased, the items' stride-4 label map)."""
    index = found = 0
    while found < num_scenes:
        image, labels, _, info = compose_task_scene(np.random.default_rng([3, index]), pool,
                                                    'marker', size, marker_side=marker_side)
        index += 1
        if info['marker']:
            found += 1
            erased = image.copy()
            erased[(image[..., 0] == 255) & (image[..., 1] == 0)] = 0
            yield image, erased, labels


def _item_mask(labels, size, map_size):
    stride = size // map_size[-1]
    item = torch.from_numpy(labels[stride // 2::stride, stride // 2::stride] > 0)
    return item[:map_size[-2], :map_size[-1]]


@torch.no_grad()
def marker_response(model, pool, size, marker_side=MARKER, num_scenes=4):
    """How much each neural memory responds when the marker is erased from a scene (mean over
    ``num_scenes`` marker scenes of ``pool``), or None for a model without memory. Returns, one
    value per memory:

    * ``input``: the change of the memory's input map, relative to that map's spread around its
      mean (how much of what the stage sees is the cross);
    * ``read``: the relative change, at the items' positions, of the memory's read before its
      output projection;
    * ``map``: the same for the global map G, the signal a marker-task gradient starts from;
    * ``step``, ``key`` and ``error``: at the cross's tokens against all tokens, the ratio of
      the mean per-token step sigma(.), of the mean (centred) key norm and of the mean error
      ||f_W0(k) - v|| of the first write, the three factors with which a token enters the write
      (1: a cross token writes like an average token; NaN where a stage is too coarse for its
      tokens to sample the cross in every scene);
    * ``gain``: in the read f_W(q) = q + beta + gamma * LN(q W) of the initial memory, the mean
      over all tokens of ||gamma * LN(q W)|| / ||q + beta||: how loud the memory term is against
      the residual (about sqrt(d) at initialisation). Where it falls, every token reads back its
      own query, whatever was written.

    Together they tell where the cross is lost: an input that stops responding means the layers
    before the memory learned to erase the cross; a read that stops behind a responding input
    means the write no longer carries it (``step``, ``key`` and ``error`` say through which
    factor, ``gain`` whether the read still listens to the memory); a map that stops behind a
    responding read means the projection ignores it. With ``zero_init_memory`` G is 0 at
    initialisation and ``map`` is NaN there.
    """
    from .models import NeuralMemory
    memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    if not memories:
        return None
    was_training = model.training
    model.eval()
    grabbed = {}
    hooks = [m.register_forward_pre_hook(lambda mod, i, k=k: grabbed.update({('input', k): i[0]}))
             for k, m in enumerate(memories)]
    hooks += [m.proj.register_forward_hook(
        lambda mod, i, o, k=k: grabbed.update({('read', k): i[0], ('map', k): o}))
        for k, m in enumerate(memories)]
    hooks += [m.norm.register_forward_hook(lambda mod, i, o, k=k: grabbed.update({('tokens', k): o}))
              for k, m in enumerate(memories)]
    change = {name: [[] for _ in memories]
              for name in ('input', 'read', 'map', 'step', 'key', 'error', 'gain')}
    try:
        for image, erased, labels in _marker_pairs(pool, size, marker_side, num_scenes):
            grabbed.clear()
            model(to_input([image, erased]))
            for (name, k), t in grabbed.items():
                if name == 'tokens':  # the memory's (B, N, C_m) tokens
                    red = (image[..., 0] == 255) & (image[..., 1] == 0)
                    side = math.isqrt(t.shape[1])
                    cross = _item_mask(red, size, (side, side)).flatten()
                    for factor, ratio in _write_factors(memories[k], t[0], cross).items():
                        change[factor][k].append(ratio)
                    continue
                if name == 'input':  # (B, C, h, w)
                    a, b = t[0], t[1]
                    spread = (b - b.mean((1, 2), keepdim=True)).norm()
                else:  # proj's (B, N, C) tokens, in raster order of the stage's square map
                    item = _item_mask(labels, size, (math.isqrt(t.shape[1]),) * 2).flatten()
                    a, b = t[0, item], t[1, item]
                    spread = b.norm()
                change[name][k].append(float((a - b).norm() / spread) if spread > 0 else math.nan)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: [float(np.mean(c)) for c in per] for name, per in change.items()}


def _write_factors(memory, tokens, cross):
    """A memory's per-token step, key norm and first-write error at the ``cross`` tokens against
    all of (N, C_m) ``tokens``, and its read's gain, as its forward computes them."""
    N, nh, d = tokens.shape[0], memory.num_heads, memory.head_dim
    q, k, v = F.silu(memory.qkv(tokens)).view(N, 3, nh, d).permute(1, 2, 0, 3)  # (nh, N, d) each
    k = F.normalize(k, dim=-1)
    if memory.center_keys:
        k = k - k.mean(1, keepdim=True)
    step = torch.sigmoid(memory.gates(tokens)[:, :nh])
    key = k.norm(dim=-1)
    fast = memory.memory
    weights, (gamma, beta) = fast.initial_state(1, k.dtype), fast.ln_params(1, k.dtype)
    error = (fast(weights, k, (gamma, beta)) - v).norm(dim=-1)
    out = {name: float(t[..., cross].mean() / t.mean())
           for name, t in (('step', step.T), ('key', key), ('error', error))}
    q = F.normalize(q, dim=-1)
    out['gain'] = float(((gamma * fast.normalized(weights, q)[0]).norm(dim=-1)
                         / (q + beta).norm(dim=-1)).mean())
    return out


@torch.no_grad()
def head_signal(probe, pool, size, marker_side=MARKER, num_scenes=6):
    """What of the cross reaches the probe's head input (``Probe.hidden``) at the items.

    With d_i the change of item position i's head input when the cross is erased (over
    ``num_scenes`` marker scenes), returns ``ratio``: |mean d| / |std of the head inputs over
    the items|, the consistent part of the signal against the spread a linear head must read it
    through, ``consistency``: |mean d| / mean |d| (1: every item moves the same way), and
    ``toward``: the share of item positions whose 1-vs-2 logit margin the cross raises, the
    direction of the right answer (0.5: no preferred sign).
    """
    probe.eval()
    deltas, feats, toward = [], [], []
    for image, erased, labels in _marker_pairs(pool, size, marker_side, num_scenes):
        x = to_input([image, erased])
        h = probe.hidden(x)
        logits = probe.logits(h, x)
        item = _item_mask(labels, size, h.shape[-2:])
        deltas.append((h[0] - h[1])[:, item].T)
        feats.append(h[1][:, item].T)
        margin = logits[:, 1] - logits[:, 2]
        toward.append((margin[0] - margin[1])[item] > 0)
    d, f = torch.cat(deltas), torch.cat(feats)
    mean = d.mean(0).norm()
    return dict(ratio=float(mean / f.std(0).norm()),
                consistency=float(mean / d.norm(dim=1).mean().clamp_min(1e-30)),
                toward=float(torch.cat(toward).float().mean()))

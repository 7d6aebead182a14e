"""Speed, FLOPs and memory of the ConvNeur backbones against peer backbones, side by side.

    python tools/benchmark.py --quick            # a few-minute subset: 11 models, 224^2 to 1024^2
    python tools/benchmark.py                    # everything (about 35 minutes on 2 CPU cores)
    python tools/benchmark.py --models convneur-m1 resnet18 --sizes 224 1024
    python tools/benchmark.py --baseline HEAD~1 --models convneur-m1 convneur-m1-baseline \
        convneur-m1-local convneur-m1-local-baseline     # this checkout against a git revision

Every model is built in this process (ConvNeur from this package; the peers from the installed
mmpretrain and mmdet) and timed in one interleaved loop: each round runs every model once, so
drift of the machine hits all models alike; the reported latency is the median over rounds.
On a CUDA machine the timings use CUDA events, fp16 autocast and channels_last.

Reported per model and input size: backbone parameters, FLOPs (mmengine's FlopAnalyzer, one
multiply-add = one FLOP, attention included), latency at batch 1, throughput at a larger batch
(224^2 and 512^2), peak memory allocated by a forward pass (CPU: from the profiler's memory
events; CUDA: max allocated), achieved GFLOP/s and, on a CPU, the page faults of a pass. Then a
least-squares fit of log FLOPs and log latency against log pixels, and the speed targets, each with
its measured value and PASS / MISS. A target on a latency ratio (the memory's share, one network
against another) is read round by round: both networks ran in every round, so each round gives
one ratio, and the report has their mean with its 95% t-interval; PASS and MISS need the whole
interval on one side of the limit, and an interval across it reads "not separated".

Allocator (CPU): glibc's allocator hands blocks above its mmap threshold (128 KiB at start, raised
as the process frees larger blocks) to the kernel and back, so a forward pass can fault its
temporaries in afresh; how often depends on what the process did before, and it changed one
model's latency by up to a fifth and the comparisons between models with it (docs/benchmarks.md).
So by default (``--allocator fixed``) the tool fixes glibc's mmap and trim thresholds at 1 GiB
before it builds a model: freed memory stays in the process and no pass faults, whatever
ran before it. ``--allocator system`` leaves the allocator as the environment set it (glibc's
defaults, ``MALLOC_*`` variables, an ``LD_PRELOAD``ed allocator). The page faults of every pass
are reported either way.

ConvNeur runs with each task's memory settings: chunk 196 (classification) at 224^2, chunk 4096
(the paper's detection and segmentation setting) at every larger size. ``convneur-mX-compiled``
is the same network with ``compile_memory=True``; ``convneur-mX-local`` has no memory, and the
difference is the memory's share of the time. ``convneur-mX-baseline`` and
``convneur-mX-local-baseline`` are the same two networks as the git revision ``--baseline`` builds
them, so that a change is timed before and after in one interleaved run. At 512^2 a forward +
backward step is also timed, and on a CPU the memory modules' own forward + backward on the
inputs they get in that step.

Results go to ``--out`` (default ``work_dirs/benchmark``): results.csv, results.md and PNG plots.
"""
import argparse
import atexit
import contextlib
import csv
import ctypes
import importlib
import math
import operator
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mmengine.config import DictAction

from convneur_mm.analysis import count_flops, count_params
from convneur_mm.engine.launch import key_value
from convneur_mm.models import ConvNeur
from convneur_mm.presets import C3_C5_PLACES, CONVNEXTV2, GLOBAL_BRANCHES
from convneur_mm.stats import mean_ci

# name: (family, builder). The peers are the backbones only, with the defaults their dense
# prediction configs use, so the comparison is backbone against backbone.
CONVNEUR = ('m1', 'm2', 'm3', 'm4')


CONVNEUR_OPTIONS = {}  # --convneur-options, applied to every ConvNeur model
REPO = Path(__file__).resolve().parents[1]
BASELINE = {}  # --baseline: the revision's ConvNeur class


def _convneur(arch, **kwargs):
    return lambda: ConvNeur(arch, **{**CONVNEUR_OPTIONS, **kwargs})


def load_baseline(ref):
    """The ConvNeur class of git revision ``ref`` of this repository.

    Its model files (``convneur_mm/models/convneur.py``, ``neural_memory.py`` and the
    ``checkpoint.py`` they import) are written to a temporary package of another name, which
    neither registry sees, so the two versions run side by side in one process.
    """
    root = Path(tempfile.mkdtemp(prefix='convneur_baseline_'))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for path in ('checkpoint.py', 'models/convneur.py', 'models/neural_memory.py'):
        shown = subprocess.run(['git', 'show', f'{ref}:convneur_mm/{path}'], cwd=REPO,
                               capture_output=True, text=True)
        if shown.returncode:
            raise SystemExit(f'--baseline {ref}: cannot read convneur_mm/{path} at that revision '
                             f'({shown.stderr.strip() or "is this a git checkout?"})')
        target = root / 'convneur_baseline' / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(shown.stdout)
    for package in ('convneur_baseline', 'convneur_baseline/models'):
        (root / package / '__init__.py').write_text('')
    sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m.split('.')[0] == 'convneur_baseline']:
        del sys.modules[name]  # a revision loaded before
    return importlib.import_module('convneur_baseline.models.convneur').ConvNeur


def _baseline(arch, **kwargs):
    def build():
        return BASELINE['class'](arch, **{**CONVNEUR_OPTIONS, **kwargs})
    return build


def _mmpretrain(name, **kwargs):
    def build():
        from mmpretrain.models import backbones
        return getattr(backbones, name)(**kwargs)
    return build


def _gated(backbone, after=(), gate=None, blocks=()):
    """A peer with a convneur_mm.MemoryGate (or ``gate``, another plug-in layer) after the named
    stages, or on their blocks: what the plug-in costs."""
    def build():
        import mmcv.cnn  # noqa: F401  (registers ContextBlock and NonLocal2d)

        from convneur_mm import MemoryGated
        return MemoryGated(backbone, after=after, gate=gate, blocks=blocks)
    return build


FOUR_MAPS = dict(out_indices=(0, 1, 2, 3))
# the peers that take gates, as MemoryGated builds them (the same arguments as their bare rows)
PEERS = {'resnet18': dict(type='mmpretrain.ResNet', depth=18, **FOUR_MAPS),
         'convnextv2-atto': dict(type='mmpretrain.ConvNeXt', arch='atto', **CONVNEXTV2, **FOUR_MAPS)}


def _pvtv2(embed_dims, num_layers):
    def build():
        from mmdet.models.backbones import PyramidVisionTransformerV2
        return PyramidVisionTransformerV2(embed_dims=embed_dims, num_layers=num_layers)
    return build


MODELS = {
    **{f'convneur-{a}': ('convneur', _convneur(a)) for a in CONVNEUR},
    # the same networks with their memories under torch.compile (compiled in the warm-up run)
    **{f'convneur-{a}-compiled': ('convneur-compiled', _convneur(a, compile_memory=True))
       for a in CONVNEUR},
    # the same networks without their global branch: what the memory costs
    **{f'convneur-{a}-local': ('convneur-local', _convneur(a, memory_placement='none'))
       for a in CONVNEUR},
    # both as the git revision --baseline builds them
    **{f'convneur-{a}-baseline': ('convneur-baseline', _baseline(a)) for a in CONVNEUR},
    **{f'convneur-{a}-local-baseline': ('convneur-local', _baseline(a, memory_placement='none'))
       for a in CONVNEUR},
    'resnet18': ('conv', _mmpretrain('ResNet', depth=18, **FOUR_MAPS)),
    'resnet50': ('conv', _mmpretrain('ResNet', depth=50, **FOUR_MAPS)),
    **{f'convnextv2-{a}': ('conv', _mmpretrain('ConvNeXt', arch=a, **CONVNEXTV2, **FOUR_MAPS))
       for a in ('atto', 'femto', 'pico', 'nano')},
    'pvtv2-b0': ('pvtv2', _pvtv2(32, [2, 2, 2, 2])),
    'pvtv2-b1': ('pvtv2', _pvtv2(64, [2, 2, 2, 2])),
    'pvtv2-b2': ('pvtv2', _pvtv2(64, [3, 4, 6, 3])),
    'deit-tiny': ('vit', _mmpretrain('VisionTransformer', arch='deit-tiny', img_size=224,
                                     patch_size=16)),
    'deit-small': ('vit', _mmpretrain('VisionTransformer', arch='deit-small', img_size=224,
                                      patch_size=16)),
    'swin-tiny': ('swin', _mmpretrain('SwinTransformer', arch='tiny', img_size=224,
                                      out_indices=(0, 1, 2, 3))),
    'poolformer-s12': ('metaformer', _mmpretrain('PoolFormer', arch='s12', out_indices=(0, 2, 4, 6))),
    # peers with a memory gate after each stage (chunk 4096, max_lr 1e-3, C_m = C / 4 up to 128)
    'resnet18+memory': ('gated', _gated(
        PEERS['resnet18'], ['layer1', 'layer2', 'layer3', 'layer4'])),
    'convnextv2-atto+memory': ('gated', _gated(
        PEERS['convnextv2-atto'], ['stages.0', 'stages.1', 'stages.2', 'stages.3'])),
    # the same gates on each stage's blocks (ConvNeur's fusion)
    'resnet18+memory-blocks': ('gated', _gated(
        PEERS['resnet18'], blocks=['layer1', 'layer2', 'layer3', 'layer4'])),
    'convnextv2-atto+memory-blocks': ('gated', _gated(
        PEERS['convnextv2-atto'], blocks=['stages.0', 'stages.1', 'stages.2', 'stages.3'])),
    # the global branches tools/compare_real.py fine-tunes on pre-trained peers
    **{f'{peer}+{gate}-c3c5': ('gated', _gated(PEERS[peer], after, cfg))
       for peer, after in C3_C5_PLACES.items() for gate, cfg in GLOBAL_BRANCHES.items()},
}
# The same peers from timm (--peer-library timm), for a machine where mmpretrain and mmdet cannot
# be installed, such as a GPU box whose torch has no mmcv build. timm's versions of these
# architectures, without their classifiers.
TIMM_PEERS = {'resnet18': 'resnet18', 'resnet50': 'resnet50',
              **{f'convnextv2-{a}': f'convnextv2_{a}' for a in ('atto', 'femto', 'pico', 'nano')},
              **{f'pvtv2-b{i}': f'pvt_v2_b{i}' for i in range(3)},
              'deit-tiny': 'deit_tiny_patch16_224', 'deit-small': 'deit_small_patch16_224',
              'poolformer-s12': 'poolformer_s12'}


def _timm(name):
    def build():
        import timm
        # ViTs take other input sizes by interpolating their position embeddings
        extra = dict(dynamic_img_size=True) if name.startswith('deit') else {}
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool='', **extra)
    return build


QUICK_MODELS = ['convneur-m1', 'convneur-m2', 'convneur-m1-compiled', 'convneur-m2-compiled',
                'convneur-m1-local', 'convneur-m2-local', 'resnet18', 'convnextv2-atto',
                'convnextv2-femto', 'pvtv2-b0', 'deit-tiny']
SIZES = {'224': (224, 224), '512': (512, 512), '1024': (1024, 1024), '2048': (2048, 2048),
         'det': (800, 1280), 'seg': (512, 2048)}
SQUARE = ('224', '512', '1024', '2048')
# The local-only variants are only needed where the memory-share target is checked.
LOCAL_SIZES = ('224', '512', '1024', 'det')
# ConvNeur's chunk size per task: classification at 224^2, the paper's dense setting elsewhere.
CLS_CHUNK, DENSE_CHUNK = 196, 4096
# Where a backbone forward + backward step is also timed (batch 1, ConvNeur only).
TRAIN_SIZES = ('512',)


def task_memory_settings(model, size):
    """Set every NeuralMemory of a ConvNeur ``model`` to the settings of the task at ``size``.

    Only the chunk size changes the cost (max_lr does not); ``--convneur-options chunk_size=...``
    overrides it at every size. Memories are found by class name, so that a ``--baseline``
    model's are found too.
    """
    chunk = CONVNEUR_OPTIONS.get('chunk_size', CLS_CHUNK if size == '224' else DENSE_CHUNK)
    for m in model.modules():
        if type(m).__name__ == 'NeuralMemory':
            m.chunk_size = chunk


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help=f'models {QUICK_MODELS}, sizes 224/512/1024, 3 rounds')
    parser.add_argument('--models', nargs='+', choices=sorted(MODELS), metavar='NAME',
                        help=f'models to run (default: all): {", ".join(MODELS)}')
    parser.add_argument('--sizes', nargs='+', choices=list(SIZES), metavar='SIZE',
                        help='input sizes: 224 512 1024 2048 (square), det (800x1280), '
                             'seg (512x2048); default: all')
    parser.add_argument('--rounds', type=int, default=None,
                        help='timed rounds per size (default 5, --quick 3; at most 3 above '
                             '1024^2 pixels)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs per model and size')
    parser.add_argument('--throughput-batch', type=int, default=16,
                        help='batch for the throughput run at 224^2 (scaled down by pixels at '
                             '512^2, skipped when it would be 1); 0 turns it off')
    parser.add_argument('--budget', type=float, default=30.0,
                        help='seconds: skip a model at a size when one forward pass takes longer '
                             '(global attention at 2048^2) and say so')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: all cores)')
    parser.add_argument('--convneur-options', nargs='+', action=DictAction, type=key_value, default={},
                        metavar='KEY=VALUE',
                        help='ConvNeur arguments for every ConvNeur model, e.g. read_mode=prev')
    parser.add_argument('--profile', nargs='+', default=[], metavar='NAME', choices=sorted(MODELS),
                        help='also print a torch.profiler table (operators by self CPU time; on a '
                             'GPU by device time, of the batched pass) of these models at every '
                             'size, written to profile_<name>_<size>.txt')
    parser.add_argument('--baseline', metavar='REF',
                        help='a git revision (commit, tag, branch) whose ConvNeur the '
                             'convneur-mX-baseline and convneur-mX-local-baseline models build')
    parser.add_argument('--peer-library', choices=('openmmlab', 'timm'), default='openmmlab',
                        help='where the peers come from: mmpretrain and mmdet (default), or timm '
                             f'(models {", ".join(TIMM_PEERS)})')
    parser.add_argument('--allocator', choices=('fixed', 'system'), default='fixed',
                        help="CPU memory allocator: 'fixed' (default) sets glibc's mmap and trim "
                             "thresholds so that freed memory stays in the process and passes do "
                             "not fault their temporaries in; 'system' leaves it as the "
                             "environment set it")
    parser.add_argument('--out', default='work_dirs/benchmark', help='output folder')
    parser.add_argument('--no-plots', action='store_true')
    args = parser.parse_args()
    if args.models is None:
        args.models = [m for m in (QUICK_MODELS if args.quick else MODELS)
                       if args.baseline or 'baseline' not in m]
    wanted = [m for m in args.models if 'baseline' in m]
    if wanted and not args.baseline:
        parser.error(f'{", ".join(wanted)} need --baseline REF (the git revision to build '
                     f'them from)')
    if args.baseline and not wanted:
        parser.error(f'--baseline {args.baseline} times nothing unless --models names a '
                     f'convneur-mX-baseline or convneur-mX-local-baseline model')
    if args.peer_library == 'timm':
        missing = [m for m in args.models
                   if not MODELS[m][0].startswith('convneur') and m not in TIMM_PEERS]
        if missing:
            parser.error(f'--peer-library timm has no {", ".join(missing)}; its peers are '
                         f'{", ".join(TIMM_PEERS)}')
        for name, timm_name in TIMM_PEERS.items():
            MODELS[name] = (MODELS[name][0], _timm(timm_name))
    if args.baseline:
        BASELINE['class'] = load_baseline(args.baseline)
    if args.sizes is None:
        args.sizes = ['224', '512', '1024'] if args.quick else list(SIZES)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rounds < 1 or args.warmup < 0 or args.budget <= 0:
        parser.error('--rounds must be >= 1, --warmup >= 0 and --budget > 0')
    CONVNEUR_OPTIONS.update(args.convneur_options)
    return args


def minor_faults():
    """Minor page faults of this process (every thread) so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# Allocator settings of the environment, reported with --allocator system
MALLOC_ENV = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_ARENA_MAX', 'LD_PRELOAD')
# glibc's mallopt parameters and the thresholds --allocator fixed sets: above every temporary of
# the models up to 2048^2 but global attention's, which --budget skips there anyway
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
FIXED_THRESHOLDS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30}  # mallopt takes an int


def set_allocator(mode):
    """Apply ``--allocator`` and return how the report names it."""
    if mode == 'fixed':
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None and all(mallopt(k, v) for k, v in FIXED_THRESHOLDS.items()):
            return 'fixed (glibc mmap and trim thresholds 1 GiB)'
        log('--allocator fixed needs glibc\'s mallopt, which this C library lacks: the allocator '
            'is left as it is')
    env = ', '.join(f'{k}={os.environ[k]}' for k in MALLOC_ENV if os.environ.get(k))
    return f'system ({env or "no MALLOC_* or LD_PRELOAD set"})'


class Timer:
    """Wall-clock timing of one call: perf_counter on CPU, CUDA events on a GPU."""

    def __init__(self, device):
        self.device = device

    def __call__(self, fn):
        if self.device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(fn, device):
    """Extra memory a forward pass allocates at its peak, in bytes (output included).

    CUDA: max allocated above what was allocated before. CPU: the profiler's allocation and free
    events of the pass, replayed in time order (the process's resident set would not do: the
    allocator keeps freed memory).
    """
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with quiet_stderr(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def profile(name, size, forward, out, device):
    """Operators of three forward passes by self time (CPU; on a GPU, time on the device),
    printed and saved."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with quiet_stderr(), torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            forward()
        if device.type == 'cuda':
            torch.cuda.synchronize()
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f'profile_{name}_{size}.txt').write_text(table)
    log(f'  profile of {name} at {size} (3 passes):\n{table}')


class MemoryClock:
    """Time a forward pass spends inside a model's memory modules, by forward hooks.

    The memory's share of a model's time is otherwise 1 - local / full, a difference of two
    medians from different networks; this measures the memory's own time in the same pass (the
    gate's multiplication in the blocks is not in it). CPU only: on a GPU a call returns before
    its kernels finish. Memories are found by class name, like :func:`task_memory_settings`.
    """

    def __init__(self, model):
        self.seconds, self._start = 0.0, None
        self.handles = [h for m in model.modules() if type(m).__name__ == 'NeuralMemory'
                        for h in (m.register_forward_pre_hook(self._enter),
                                  m.register_forward_hook(self._leave))]

    def _enter(self, module, args):
        self._start = time.perf_counter()

    def _leave(self, module, args, out):
        self.seconds += time.perf_counter() - self._start

    def remove(self):
        for h in self.handles:
            h.remove()


def make_forward(model, x, device):
    """One inference pass as a closure: fp16 autocast on CUDA, fp32 on CPU."""
    def forward():
        with torch.inference_mode(), torch.autocast(device.type, torch.float16,
                                                    enabled=device.type == 'cuda'):
            model(x)
    return forward


def make_train_step(model, x):
    """One backbone forward + backward pass (batch 1, fp32) as a closure, in training mode."""
    def step():
        model.train()
        try:
            loss = sum(out.float().mean() for out in model(x))
            loss.backward()
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()
    return step


def make_memory_train_step(model, x):
    """The model's memory modules alone, forward + backward in training mode, on the inputs they
    get from ``x``: the memory's part of a training step, measured directly rather than as the
    difference of two networks' steps. None for a model without memories (found by class name)."""
    memories = [m for m in model.modules() if type(m).__name__ == 'NeuralMemory']
    if not memories:
        return None
    inputs = []
    handles = [m.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
               for m in memories]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()

    def step():
        model.train()
        try:
            for memory, inp in zip(memories, inputs):
                # the input's gradient too: in a step it flows on into the local branch
                memory(inp.requires_grad_()).float().mean().backward()
        finally:
            model.zero_grad(set_to_none=True)
            for inp in inputs:
                inp.grad = None
            model.eval()
    return step


def fit_exponent(pixels, values):
    """Slope of log(value) against log(pixels) by least squares (None with < 2 points)."""
    pts = [(math.log(p), math.log(v)) for p, v in zip(pixels, values) if v]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return (sum((x - mx) * (y - my) for x, y in pts)
            / sum((x - mx) ** 2 for x, _ in pts))


def log(msg):
    print(msg, flush=True)


def run(args):
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # each model and input size picks its kernels
    timer = Timer(device)
    args.allocator_report = set_allocator(args.allocator) if device.type == 'cpu' else None
    log(f'device: {device} ({torch.cuda.get_device_name() if device.type == "cuda" else "CPU"}), '
        f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
        f'{args.rounds} interleaved rounds after {args.warmup} warm-up run(s)'
        + (f', allocator: {args.allocator_report}' if device.type == 'cpu' else ''))

    models = {}
    for name in args.models:
        model = MODELS[name][1]()
        model.eval()
        models[name] = model
    rows = []
    over_budget = {}  # model -> pixels at which one pass took longer than --budget
    for size in args.sizes:
        h, w = SIZES[size]
        active = [n for n in args.models if h * w < over_budget.get(n, math.inf)
                  and (MODELS[n][0] != 'convneur-local' or size in LOCAL_SIZES)]
        log(f'\n== {size}: 1x3x{h}x{w}, {len(active)} models')
        results = {}
        x = torch.randn(1, 3, h, w, device=device)  # one input, shared by every model
        if device.type == 'cuda':
            x = x.to(memory_format=torch.channels_last)
        for name in active:
            model = models[name]
            if name.startswith('convneur'):
                task_memory_settings(model, size)
            # FLOPs on CPU in fp32, before anything is moved or cast.
            t0 = time.perf_counter()
            flops = count_flops(model, (1, 3, h, w))[0]
            model.to(device)
            if device.type == 'cuda':
                model.to(memory_format=torch.channels_last)

            forward = make_forward(model, x, device)
            if MODELS[name][0] == 'convneur-compiled':
                forward()  # compiles for this shape: the budget is about running, not compiling
            first = timer(forward)
            if first > args.budget:
                log(f'  {name:<20} one forward took {first:.1f} s > --budget {args.budget:.0f} s: '
                    f'skipped here and at sizes with as many pixels or more')
                over_budget[name] = h * w
                model.to('cpu')
                continue
            for _ in range(args.warmup - 1):
                forward()
            results[name] = dict(model=name, family=MODELS[name][0], size=size, height=h, width=w,
                                 params=count_params(model), flops=flops, times=[],
                                 peak_mem=peak_memory(forward, device), forward=forward, x=x,
                                 train_times=[], train_step=None, memory_times=[], faults=[],
                                 memory_train_times=[], memory_train_step=None,
                                 clock=MemoryClock(model) if device.type == 'cpu' else None)
            if size in TRAIN_SIZES and name.startswith('convneur'):
                results[name]['train_step'] = make_train_step(model, x)
                results[name]['train_step']()  # warm-up (and compilation of the backward)
                if device.type == 'cpu':  # on a GPU a call returns before its kernels finish
                    results[name]['memory_train_step'] = make_memory_train_step(model, x)
                if results[name]['memory_train_step'] is not None:
                    results[name]['memory_train_step']()
            log(f'  {name:<20} {flops / 1e9:8.2f} GFLOPs, first run {first * 1e3:8.1f} ms '
                f'(set-up {time.perf_counter() - t0:.1f} s)')
        # fewer rounds where one pass takes seconds
        rounds = args.rounds if h * w <= 1024 * 1024 else min(args.rounds, 3)
        for r in range(rounds):
            # rotate the order every round so no model always runs right after the same one
            order = list(results)[r % max(len(results), 1):] + list(results)[:r % max(len(results), 1)]
            for name in order:
                clock = results[name]['clock']
                if clock is not None:
                    clock.seconds = 0.0
                faults = minor_faults() if device.type == 'cpu' else None  # no syscall on GPU
                results[name]['times'].append(timer(results[name]['forward']))
                if faults is not None:
                    results[name]['faults'].append(minor_faults() - faults)
                if clock is not None and clock.handles:
                    results[name]['memory_times'].append(clock.seconds)
                if results[name]['train_step'] is not None:
                    results[name]['train_times'].append(timer(results[name]['train_step']))
                if results[name]['memory_train_step'] is not None:
                    results[name]['memory_train_times'].append(
                        timer(results[name]['memory_train_step']))
            log(f'  round {r + 1}/{rounds} done')
        batch = (max(1, round(args.throughput_batch * 224 * 224 / (h * w)))
                 if args.throughput_batch else 1)
        for name, res in results.items():
            res['latency_ms'] = statistics.median(res['times']) * 1e3
            res['spread_ms'] = (max(res['times']) - min(res['times'])) * 1e3
            res['gflops_per_s'] = res['flops'] / 1e9 / (res['latency_ms'] / 1e3)
            res['page_faults'] = statistics.median(res['faults']) if res['faults'] else None
            res['throughput'] = None
            res['batch'] = batch
            res['train_ms'] = (statistics.median(res['train_times']) * 1e3
                               if res['train_times'] else None)
            res['memory_ms'] = (statistics.median(res['memory_times']) * 1e3
                                if res['memory_times'] else None)
            res['memory_train_ms'] = (statistics.median(res['memory_train_times']) * 1e3
                                      if res['memory_train_times'] else None)
            if res['clock'] is not None:
                res['clock'].remove()
            if batch > 1:
                xb = res['x'].repeat(batch, 1, 1, 1)
                if device.type == 'cuda':
                    xb = xb.to(memory_format=torch.channels_last)
                forward_batch = make_forward(models[name], xb, device)
                forward_batch()
                res['throughput'] = batch / statistics.median(timer(forward_batch) for _ in range(3))
            log(f'  {name:<20} {res["latency_ms"]:9.1f} ms (spread {res["spread_ms"]:.1f}), '
                f'{res["gflops_per_s"]:6.1f} GFLOP/s'
                + (f', {res["throughput"]:.1f} img/s at batch {batch}' if res['throughput'] else '')
                + (f', peak +{res["peak_mem"] / 2**20:.0f} MiB' if res['peak_mem'] is not None else '')
                + (f', {res["page_faults"]:.0f} page faults' if res['page_faults'] is not None
                   else '')
                + (f', forward+backward {res["train_ms"]:.1f} ms' if res['train_ms'] else '')
                + (f', {res["memory_ms"]:.1f} ms in its memories' if res['memory_ms'] else '')
                + (f', its memories alone forward+backward {res["memory_train_ms"]:.1f} ms'
                   if res['memory_train_ms'] else ''))
            if name in args.profile:
                # on a GPU the batched pass, where kernels rather than launches take the time
                if device.type == 'cuda' and batch > 1:
                    profile(f'{name}_b{batch}', size, forward_batch, args.out, device)
                else:
                    profile(name, size, res['forward'], args.out, device)
            # 'times' and 'train_times' stay: the targets pair models round by round
            for key in ('forward', 'x', 'faults', 'train_step', 'memory_times',
                        'memory_train_times', 'memory_train_step', 'clock'):
                del res[key]
            rows.append(res)
        for name in results:
            models[name].to('cpu')
    return rows, device


# ----------------------------------------------------------------------------- reporting
def by(rows, model, size):
    for r in rows:
        if r['model'] == model and r['size'] == size:
            return r
    return None


def fits(rows):
    """Per model: exponents of FLOPs and latency against pixels over the square sizes run."""
    out = {}
    for model in dict.fromkeys(r['model'] for r in rows):
        pts = [by(rows, model, s) for s in SQUARE if by(rows, model, s)]
        if len(pts) >= 2:
            pix = [r['height'] * r['width'] for r in pts]
            out[model] = dict(sizes=f'{pts[0]["size"]}-{pts[-1]["size"]}',
                              flops=fit_exponent(pix, [r['flops'] for r in pts]),
                              latency=fit_exponent(pix, [r['latency_ms'] for r in pts]))
    return out


def share(full, local):
    return 1 - local / full


def share_text(value):
    return f'{value:.1%}'


def paired(check, a, b, key, limit, show=share_text):
    """(measured, status) of a target ``check(a_r, b_r) <= limit`` over the rounds r of one run
    (both rows ran in each): mean and 95% t-interval of the per-round values; PASS / MISS when the
    interval is on one side of the limit, 'not separated' when it holds the limit. One round: its
    value decides."""
    values = [check(x, y) for x, y in zip(a[key], b[key])]
    mean, half = mean_ci(values)
    if math.isnan(half):
        return show(mean), 'PASS' if mean <= limit else 'MISS'
    status = ('PASS' if mean + half <= limit else 'MISS' if mean - half > limit
              else 'not separated')
    return (f'{show(mean)} (95% CI {show(mean - half)}-{show(mean + half)}, '
            f'{len(values)} rounds)', status)


def targets(rows, fitted):
    """The speed targets as (description, measured, status) rows; only those with data.

    ``status`` is PASS, MISS, 'not separated' or '-' (shown for information only). The memory's
    share of a ConvNeur model's time is 1 - local / full, with the local-only model of the same
    preset measured in the same rounds.
    """
    checks = []
    conv_median = {size: statistics.median(r['gflops_per_s'] for r in rows
                                           if r['family'] == 'conv' and r['size'] == size)
                   for size in SIZES if any(r['family'] == 'conv' and r['size'] == size
                                            for r in rows)}
    for arch in CONVNEUR:
        local = f'convneur-{arch}-local'
        for name, local_name in ((f'convneur-{arch}', local), (f'convneur-{arch}-compiled', local),
                                 (f'convneur-{arch}-baseline', f'{local}-baseline')):
            f = fitted.get(name)
            if f and f['sizes'] == '224-2048':
                checks.append((f'{name}: FLOPs exponent 224^2-2048^2 <= 1.02',
                               f'{f["flops"]:.3f}', 'PASS' if f['flops'] <= 1.02 else 'MISS'))
                checks.append((f'{name}: latency exponent 224^2-2048^2 <= 1.10',
                               f'{f["latency"]:.3f}', 'PASS' if f['latency'] <= 1.10 else 'MISS'))
            for size in LOCAL_SIZES:
                full, local = by(rows, name, size), by(rows, local_name, size)
                if not (full and local):
                    continue
                checks.append((f'{name} @{size}: memory branch <= 20% of latency (batch 1)',
                               *paired(share, full, local, 'times', 0.20)))
                if full.get('memory_ms'):
                    checks.append((f'{name} @{size}: time inside the memory modules (hooks; '
                                   f'for information)',
                                   f'{full["memory_ms"] / full["latency_ms"]:.1%}', '-'))
                if full.get('train_times') and local.get('train_times'):
                    checks.append((f'{name} @{size}: memory branch <= 25% of a forward+backward '
                                   f'step', *paired(share, full, local, 'train_times', 0.25)))
                if full.get('train_ms') and full.get('memory_train_ms'):
                    checks.append((f'{name} @{size}: its memories alone, forward+backward, over '
                                   f'the step (for information)',
                                   f'{full["memory_train_ms"] / full["train_ms"]:.1%}', '-'))
            for size, median in conv_median.items():
                full = by(rows, name, size)
                if full:
                    achieved = full['gflops_per_s'] / median
                    checks.append((f'{name} @{size}: GFLOP/s >= 0.8x median of conv peers',
                                   f'{achieved:.2f}x', 'PASS' if achieved >= 0.8 else 'MISS'))
            mine = by(rows, name, '224')
            for peer in {'m1': ('convnextv2-atto', 'pvtv2-b0'),
                         'm2': ('convnextv2-femto',)}.get(arch, ()):
                other = by(rows, peer, '224')
                if mine and other:
                    checks.append((f'{name} @224: no slower than {peer} (latency ratio)',
                                   *paired(operator.truediv, mine, other, 'times', 1.0,
                                           show=lambda v: f'{v:.2f}x')))
    return checks


def write_outputs(rows, device, args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = ['model', 'family', 'size', 'height', 'width', 'params', 'flops', 'latency_ms',
              'spread_ms', 'gflops_per_s', 'batch', 'throughput', 'peak_mem', 'page_faults',
              'train_ms', 'memory_ms', 'memory_train_ms']
    with open(out / 'results.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in fields})
    fitted = fits(rows)
    checks = targets(rows, fitted)
    machine = (torch.cuda.get_device_name() if device.type == 'cuda'
               else f'CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible), '
                    f'allocator: {args.allocator_report}')
    peers = ('mmpretrain / mmdet' if args.peer_library == 'openmmlab'
             else f'timm {importlib.import_module("timm").__version__}')
    lines = [f'Machine: {machine}; torch {torch.__version__}; peers from {peers}; '
             f'{args.rounds} interleaved rounds, '
             f'median latency.', '', f'Command: `python tools/benchmark.py {" ".join(sys.argv[1:])}`',
             '']
    for size in args.sizes:
        sized = [r for r in rows if r['size'] == size]
        if not sized:
            continue
        h, w = SIZES[size]
        lines += [f'### {h}x{w}', '',
                  '| model | params (M) | GFLOPs | latency (ms, batch 1) | in its memories (ms) | '
                  'GFLOP/s | throughput (img/s) | peak memory (MiB) | page faults per pass | '
                  'forward+backward (ms) | its memories alone, forward+backward (ms) |',
                  '|---|---|---|---|---|---|---|---|---|---|---|']
        for r in sized:
            tput = f'{r["throughput"]:.1f} (b{r["batch"]})' if r['throughput'] else '-'
            mem = f'{r["peak_mem"] / 2**20:.0f}' if r['peak_mem'] is not None else '-'
            train = f'{r["train_ms"]:.1f}' if r['train_ms'] else '-'
            inside = f'{r["memory_ms"]:.1f}' if r['memory_ms'] else '-'
            alone = f'{r["memory_train_ms"]:.1f}' if r['memory_train_ms'] else '-'
            faults = f'{r["page_faults"]:.0f}' if r['page_faults'] is not None else '-'
            lines.append(f'| {r["model"]} | {r["params"] / 1e6:.2f} | {r["flops"] / 1e9:.2f} | '
                         f'{r["latency_ms"]:.1f} | {inside} | {r["gflops_per_s"]:.1f} | {tput} | '
                         f'{mem} | {faults} | {train} | {alone} |')
        lines.append('')
    if fitted:
        lines += ['### Exponents against pixel count (log-log least squares)', '',
                  '| model | sizes | FLOPs exponent | latency exponent |', '|---|---|---|---|']
        lines += [f'| {m} | {f["sizes"]} | {f["flops"]:.3f} | {f["latency"]:.3f} |'
                  for m, f in fitted.items()]
        lines.append('')
    if checks:
        lines += ['### Targets', '', '| target | measured | |', '|---|---|---|']
        lines += [f'| {d} | {v} | {status} |' for d, v, status in checks]
        lines.append('')
    text = '\n'.join(lines)
    (out / 'results.md').write_text(text)
    log('\n' + text)
    if not args.no_plots:
        plot(rows, fitted, out)
    log(f'results: {out / "results.csv"}, {out / "results.md"}'
        + ('' if args.no_plots else f', {out}/*.png'))


def plot(rows, fitted, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = [m for m in dict.fromkeys(r['model'] for r in rows) if '-local' not in m]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in ((axes[0], 'latency_ms', 'latency, batch 1 (ms)'),
                           (axes[1], 'flops', 'FLOPs')):
        for m in models:
            pts = [by(rows, m, s) for s in SQUARE if by(rows, m, s)]
            if len(pts) < 2:
                continue
            style = '-o' if m.startswith('convneur') else '--.'
            exp = fitted.get(m, {}).get('latency' if key == 'latency_ms' else 'flops')
            ax.plot([p['height'] * p['width'] for p in pts], [p[key] for p in pts], style,
                    label=f'{m} (exp {exp:.2f})' if exp else m)
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('pixels')
        ax.set_ylabel(label)
        ax.grid(True, which='both', alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / 'scaling.png', dpi=120)
    plt.close(fig)

    sizes = [s for s in SIZES if any(r['size'] == s for r in rows)]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        sized = [r for r in rows if r['size'] == size and '-local' not in r['model']]
        ax.barh([r['model'] for r in sized], [r['gflops_per_s'] for r in sized],
                color=['tab:red' if r['family'] == 'convneur' else 'tab:gray' for r in sized])
        ax.set_title(f'{SIZES[size][0]}x{SIZES[size][1]}')
        ax.set_xlabel('achieved GFLOP/s (batch 1)')
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / 'gflops_per_s.png', dpi=120)
    plt.close(fig)

    sized = [r for r in rows if r['size'] == '224' and '-local' not in r['model']]
    if sized:
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in sized:
            ax.scatter(r['flops'] / 1e9, r['latency_ms'],
                       c='tab:red' if r['family'] == 'convneur' else 'tab:gray')
            ax.annotate(r['model'], (r['flops'] / 1e9, r['latency_ms']), fontsize=7)
        ax.set_xlabel('GFLOPs at 224x224')
        ax.set_ylabel('latency, batch 1 (ms)')
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / 'flops_vs_latency_224.png', dpi=120)
        plt.close(fig)


def main():
    args = parse_args()
    t = time.perf_counter()
    rows, device = run(args)
    write_outputs(rows, device, args)
    log(f'total time {time.perf_counter() - t:.0f} s')


if __name__ == '__main__':
    main()

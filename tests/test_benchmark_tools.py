"""tools/benchmark.py and tools/compare_real.py: their arithmetic, and a small run of each."""
import csv
import importlib.util
import json
import operator
import os
import os.path as osp
import shutil
import subprocess
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from convneur_mm import archive
from convneur_mm.analysis import count_flops

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_exponent_recovers_a_power_law():
    fit = load_tool('benchmark').fit_exponent
    pixels = [224 ** 2, 512 ** 2, 1024 ** 2, 2048 ** 2]
    assert fit(pixels, [3.0 * p ** 1.3 for p in pixels]) == pytest.approx(1.3)
    assert fit(pixels[:1], [1.0]) is None


def test_latency_targets_are_read_round_by_round_with_an_interval():
    benchmark = load_tool('benchmark')
    row = lambda times: dict(times=times)  # noqa: E731
    local = row([8.0, 9.0, 8.5, 8.2, 8.8])
    # the same 10% share in every round: an interval of zero width, clear of a 20% limit
    measured, status = benchmark.paired(benchmark.share, row([t / 0.9 for t in local['times']]),
                                        local, 'times', 0.20)
    assert status == 'PASS' and measured.startswith('10.0% (95% CI 10.0%-10.0%, 5 rounds)')
    _, status = benchmark.paired(benchmark.share, row([t / 0.7 for t in local['times']]),
                                 local, 'times', 0.20)
    assert status == 'MISS'
    # shares of 10% to 30% from round to round: the interval holds the limit
    full = row([t / (1 - s) for t, s in zip(local['times'], (0.1, 0.3, 0.15, 0.28, 0.2))])
    measured, status = benchmark.paired(benchmark.share, full, local, 'times', 0.20)
    assert status == 'not separated' and measured.startswith('20.6% (95% CI 10.1%-31.1%')
    # pairs are taken round by round: the slow round of both networks cancels out
    _, status = benchmark.paired(operator.truediv, row([10.0, 20.0, 10.2]),
                                 row([10.5, 21.0, 10.6]), 'times', 1.0)
    assert status == 'PASS'
    # one round gives no interval: its value decides
    assert benchmark.paired(benchmark.share, row([10.0]), row([7.0]), 'times', 0.20) == \
        ('30.0%', 'MISS')


def test_count_flops_includes_attention():
    class Attention(nn.Module):
        def forward(self, x):  # x: (B, heads, N, d)
            return F.scaled_dot_product_attention(x, x, x)

    b, h, n, d = 2, 3, 50, 16
    flops = count_flops(Attention(), (b, h, n, d))[0]
    assert flops == b * h * n * n * 2 * d  # q k^T and the weighted sum, in multiply-adds


def test_benchmark_compiled_rows_are_the_same_networks_compiled():
    models = load_tool('benchmark').MODELS
    for arch in ('m1', 'm2', 'm3', 'm4'):
        eager, compiled = models[f'convneur-{arch}'][1](), models[f'convneur-{arch}-compiled'][1]()
        assert eager.arch == compiled.arch
        memories = [s.memory for s in compiled.stages]
        assert all(m.compile for m in memories) and not any(s.memory.compile for s in eager.stages)


def test_benchmark_peers_from_timm(monkeypatch):
    """--peer-library timm builds the same peers through timm (faked here: timm is not pinned),
    and names the peers it lacks."""
    built = []
    fake = types.ModuleType('timm')
    fake.create_model = lambda name, **kwargs: built.append((name, kwargs)) or nn.Identity()
    monkeypatch.setitem(sys.modules, 'timm', fake)
    benchmark = load_tool('benchmark')
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', '--peer-library', 'timm', '--models',
                                      'convneur-m1', 'convnextv2-atto', 'deit-tiny'])
    args = benchmark.parse_args()
    for name in args.models[1:]:
        assert isinstance(benchmark.MODELS[name][1](), nn.Identity)
    assert [name for name, _ in built] == ['convnextv2_atto', 'deit_tiny_patch16_224']
    assert all(kw['pretrained'] is False and kw['num_classes'] == 0 for _, kw in built)
    assert built[1][1]['dynamic_img_size'] is True
    assert benchmark.MODELS['convnextv2-atto'][0] == 'conv'  # the targets still find the peers
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', '--peer-library', 'timm', '--models',
                                      'swin-tiny'])
    with pytest.raises(SystemExit):
        benchmark.parse_args()


def test_benchmark_baseline_builds_a_revisions_convneur_beside_this_one():
    from convneur_mm import ConvNeur
    benchmark = load_tool('benchmark')
    Baseline = benchmark.load_baseline('HEAD')
    assert Baseline is not ConvNeur and Baseline.__module__ == 'convneur_baseline.models.convneur'
    torch.manual_seed(0)
    ours, theirs = ConvNeur('m1').eval(), Baseline('m1').eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    # 64^2: every stage is one chunk, where each revision since the memory's step correction
    # computes the same function
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit, match='--baseline no-such-ref: cannot read convneur_mm/'):
        benchmark.load_baseline('no-such-ref')
    out = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'benchmark.py'), '--models',
                          'convneur-m1-baseline'], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and 'convneur-m1-baseline need --baseline REF' in out.stderr
    # and a revision with no model to build from it would time nothing from it
    out = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'benchmark.py'), '--models',
                          'convneur-m1', '--baseline', 'HEAD'], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2 and '--baseline HEAD times nothing unless --models' in out.stderr


def test_benchmark_names_the_allocator_it_left_alone(monkeypatch, capsys):
    benchmark = load_tool('benchmark')
    set_allocator = benchmark.set_allocator
    for name in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_ARENA_MAX',
                 'LD_PRELOAD'):
        monkeypatch.delenv(name, raising=False)
    assert set_allocator('system') == 'system (no MALLOC_* or LD_PRELOAD set)'
    monkeypatch.setenv('MALLOC_ARENA_MAX', '2')
    assert set_allocator('system') == 'system (MALLOC_ARENA_MAX=2)'
    # a C library without glibc's mallopt: the allocator is left alone, and the report says so
    monkeypatch.setattr(benchmark.ctypes, 'CDLL', lambda name: object())
    assert set_allocator('fixed') == 'system (MALLOC_ARENA_MAX=2)'
    assert 'needs glibc' in capsys.readouterr().out


def test_benchmark_times_the_memories_alone_forward_and_backward():
    from convneur_mm import ConvNeur
    step_of = load_tool('benchmark').make_memory_train_step
    x = torch.randn(1, 3, 64, 64)
    assert step_of(ConvNeur('m1', memory_placement='none').eval(), x) is None
    model = ConvNeur('m1').eval()
    step = step_of(model, x)
    reached = set()
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name: reached.add(name))
    step()
    # every memory parameter gets its gradient, nothing else runs, and the model is left as found
    assert reached == {n for n, _ in model.named_parameters() if '.memory.' in n}
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_benchmark_small_run(tmp_path):
    cmd = [sys.executable, osp.join(REPO, 'tools', 'benchmark.py'), '--models', 'convneur-m1',
           'convneur-m1-local', 'resnet18', '--sizes', '224', '--rounds', '3',
           '--throughput-batch', '2', '--out', str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['model'] for r in rows] == ['convneur-m1', 'convneur-m1-local', 'resnet18']
    for r in rows:
        assert float(r['latency_ms']) > 0 and float(r['peak_mem']) > 0
        assert float(r['throughput']) > 0 and r['batch'] == '2'
        # faults are counted per pass (the median of the rounds), not since the start: with
        # glibc's thresholds fixed, a pass reuses the memory earlier passes freed (a first round
        # may still grow the heap by a few hundred pages)
        assert 0 <= float(r['page_faults']) <= 64
    # the time inside the memories, by hooks: only where there are memories, and part of the pass
    inside = {r['model']: r['memory_ms'] for r in rows}
    assert inside['convneur-m1-local'] == inside['resnet18'] == ''
    assert 0 < float(inside['convneur-m1']) < float(rows[0]['latency_ms'])
    flops = {r['model']: float(r['flops']) for r in rows}
    assert 0.70e9 < flops['convneur-m1'] < 0.72e9 and flops['convneur-m1-local'] < flops['convneur-m1']
    assert abs(flops['resnet18'] / 1.82e9 - 1) < 0.01  # mmpretrain's model card: 1.82 GFLOPs
    report = (tmp_path / 'results.md').read_text()
    assert 'allocator: fixed (glibc mmap and trim thresholds 1 GiB)' in report
    assert 'convneur-m1 @224: memory branch <= 20% of latency' in report
    assert 'convneur-m1 @224: time inside the memory modules' in report
    assert 'GFLOP/s >= 0.8x median of conv peers' in report
    for png in ('gflops_per_s.png', 'flops_vs_latency_224.png'):
        assert (tmp_path / png).stat().st_size > 0


def test_compare_real_configs_swap_only_the_backbone(tmp_path):
    data = tmp_path / 'data'
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'prepare_data.py'), '--out', str(data),
                    '--only', 'nuclei', 'fashion_mnist'], check=True)
    cmd = [sys.executable, osp.join(REPO, 'tools', 'compare_real.py'), '--dry-run', '--tasks',
           'cls', 'seg', '--runs', 'convneur-m1', 'resnet18', 'deit-tiny', 'pvtv2-b0', 'm1 fusion=add',
           '--seeds', '3', '--work-dir', str(tmp_path), '--data-root', str(data), '--archive', '']
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'seg | deit-tiny: VisionTransformer' in out.stdout
    from mmengine.config import Config
    configs = {(task, run): Config.fromfile(tmp_path / task / run / 'seed3' / 'config.py')
               for task in ('cls', 'seg')
               for run in ('convneur-m1', 'resnet18', 'deit-tiny', 'pvtv2-b0', 'm1_fusion-add')}
    reference = configs['seg', 'convneur-m1']
    for (task, run), cfg in configs.items():
        assert cfg.randomness.seed == 3
        assert cfg.train_dataloader.dataset.data_root.startswith(str(data))
        assert cfg.optim_wrapper.constructor == 'DefaultOptimWrapperConstructor'
        base = configs[task, 'convneur-m1']
        # the recipe is the same for every backbone of a task
        assert cfg.optim_wrapper.optimizer == base.optim_wrapper.optimizer
        assert cfg.param_scheduler == base.param_scheduler
        assert cfg.train_dataloader.batch_size == base.train_dataloader.batch_size
    assert configs['seg', 'resnet18'].model.neck.in_channels == [64, 128, 256, 512]
    assert configs['seg', 'deit-tiny'].model.neck.type == 'MultiLevelNeck'
    assert configs['cls', 'pvtv2-b0'].model.neck.type == 'convneur_mm.PoolMaps'  # list outputs
    assert configs['cls', 'm1_fusion-add'].model.backbone.fusion == 'add'
    assert reference.model.decode_head == configs['seg', 'resnet18'].model.decode_head
    # checkpoints a cut-off run can resume from: every epoch, or every 100 iterations
    assert configs['cls', 'resnet18'].default_hooks.checkpoint.interval == 1
    assert reference.default_hooks.checkpoint.interval == min(100, reference.train_cfg.max_iters)
    assert reference.default_hooks.checkpoint.max_keep_ckpts == 1


def test_compare_real_resumes_a_run_cut_off_midway(tmp_path, monkeypatch):
    """A work dir with a checkpoint and no result is a run that was cut off: it is started again
    with --resume and its log is appended to; a fresh run starts its log anew."""
    tool = load_tool('compare_real')
    calls = []
    monkeypatch.setattr(tool, '_run_tool', lambda tool_, argv, log, threads, mode='w': (
        calls.append((argv, mode)), 0)[1])
    monkeypatch.setattr(tool, 'read_metrics', lambda work_dir, task: {'mIoU': 50.0})
    args = types.SimpleNamespace(work_dir=str(tmp_path), archive='')
    fresh, cut = (tmp_path / 'scenes-seg' / 'resnet18' / f'seed{k}' for k in (0, 1))
    cut.mkdir(parents=True)
    (cut / 'last_checkpoint').write_text(str(cut / 'iter_100.pth'))
    fresh.mkdir(parents=True)
    first = tool.train('scenes-seg', 'resnet18', 0, str(fresh), 1, args)
    second = tool.train('scenes-seg', 'resnet18', 1, str(cut), 1, args)
    assert calls[0] == ([str(fresh / 'config.py'), '--work-dir', str(fresh)], 'w')
    assert calls[1] == ([str(cut / 'config.py'), '--work-dir', str(cut), '--resume'], 'a')
    assert 'resumed' not in first and second['resumed'] is True
    assert first['code'] == archive.code_version()  # the code each run used is recorded


def test_compare_real_writes_every_result_with_its_code(tmp_path):
    tool = load_tool('compare_real')
    results = [dict(task='scenes-det', run='convneur-m1', seed=0, seconds=9.0, code='abc',
                    resumed=True, **{'bbox mAP': 40.0, 'segm mAP': 41.0},
                    test={'bbox mAP': 39.0, 'segm mAP': 40.5}),
               dict(task='scenes-det', run='resnet18', seed=0, seconds=8.0,  # archived earlier
                    **{'bbox mAP': 45.0, 'segm mAP': 46.0})]
    tool.write_results(str(tmp_path), results)
    with open(tmp_path / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['run'], r['code'], r['resumed'], r['test bbox mAP']) for r in rows] == \
        [('convneur-m1', 'abc', 'True', '39.0'), ('resnet18', '', '', '')]


def test_code_version_names_the_commit_and_uncommitted_code(tmp_path, monkeypatch):
    def git(*argv):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *argv], cwd=tmp_path,
                       check=True, capture_output=True)
    monkeypatch.setattr(archive, 'REPO', str(tmp_path))
    assert archive.code_version() is None  # not a git checkout
    git('init', '-q')
    (tmp_path / 'convneur_mm').mkdir()
    (tmp_path / 'convneur_mm' / 'x.py').write_text('a = 1\n')
    git('add', '.')
    git('commit', '-qm', 'x')
    commit = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=tmp_path,
                            capture_output=True, text=True).stdout.strip()
    assert archive.code_version() == commit
    (tmp_path / 'notes.md').write_text('docs do not change a result\n')
    assert archive.code_version() == commit
    (tmp_path / 'convneur_mm' / 'x.py').write_text('a = 2\n')
    assert archive.code_version() == commit + '+uncommitted'


def summary_args(task, split, budget):
    """The arguments ``compare_real.summarize`` reads, for one task and seeds 0-2."""
    return types.SimpleNamespace(tasks=[task], seeds=[0, 1, 2], split=split, budget={task: budget})


def test_compare_real_summary_is_mean_and_95_ci():
    tool = load_tool('compare_real')
    Args = summary_args('cls', 'val', {'max_epochs': 1})

    def rows(run, values):
        return [dict(task='cls', run=run, seed=i, seconds=10.0, **{'top-1': v})
                for i, v in enumerate(values)]

    results = rows('convneur-m1', [80.0, 82.0, 84.0]) + rows('a', [90.0, 90.5, 91.0]) + \
        rows('b', [81.0, 83.0, 85.0]) + rows('resnet18', [70.0, 71.0, 72.0]) + \
        rows('resnet18 gcnet', [69.0, 70.0, 71.0])
    text = tool.summarize(results, Args)
    # t(2 dof) = 4.303: 82 ± 4.303 * 2 / sqrt(3)
    assert '| convneur-m1 | 82.00 ± 4.97 | 3 | 10 |' in text
    assert ('a: a higher (against convneur-m1); b: not separated (against convneur-m1); '
            'resnet18: convneur-m1 higher (against convneur-m1); '
            'resnet18 gcnet: not separated (against resnet18)') in text


def test_compare_real_summary_reads_every_metric():
    """Detection reports box and mask mAP; each gets its own reading, and they can differ."""
    tool = load_tool('compare_real')
    Args = summary_args('scenes-det', 'test', {'max_iters': 300})

    def rows(run, box, mask):
        return [dict(task='scenes-det', run=run, seed=i, seconds=1.0, test={
            'bbox mAP': b, 'segm mAP': m}) for i, (b, m) in enumerate(zip(box, mask))]

    results = rows('convneur-m1', [40, 41, 42], [46, 47, 48]) + \
        rows('resnet18', [50, 51, 52], [46.5, 47, 47.5])
    text = tool.summarize(results, Args)
    assert 'bbox mAP, 95% CIs: resnet18: resnet18 higher (against convneur-m1)' in text
    assert 'segm mAP, 95% CIs: resnet18: not separated (against convneur-m1)' in text


def test_compare_real_tables_keep_the_runs_of_earlier_invocations(tmp_path):
    """A table is every finished run of its task and budget, not only this invocation's."""
    tool = load_tool('compare_real')

    class Args:
        work_dir = str(tmp_path)
        budget = {'scenes-cls': {'max_epochs': 1}, 'scenes-seg-ft': {'max_iters': 100}}

    def finished(task, run, seed, folder):
        path = tmp_path / folder / run.replace(' ', '_') / f'seed{seed}'
        path.mkdir(parents=True)
        (path / 'result.json').write_text(json.dumps(dict(task=task, run=run, seed=seed)))

    finished('scenes-cls', 'resnet18', 0, 'scenes-cls')
    finished('scenes-cls', 'convneur-m1', 1, 'scenes-cls')
    finished('scenes-seg-ft', 'resnet18', 0, 'scenes-seg-ft')  # another budget: another table
    now = dict(task='scenes-cls', run='convneur-m1', seed=0, top=1.0)
    folder, rows = tool.table_rows(Args, 'scenes-cls', [now], [('scenes-cls', 'convneur-m1', 0)])
    assert folder == str(tmp_path / 'scenes-cls')
    assert [(r['run'], r['seed']) for r in rows] == [('convneur-m1', 0), ('convneur-m1', 1),
                                                     ('resnet18', 0)]
    assert rows[0] is now
    assert tool.table_rows(Args, 'scenes-seg-ft', [], [])[1] == []


def test_compare_real_archive_keeps_results_beyond_the_work_dir(tmp_path):
    """A result survives a lost work dir through the archive and is not trained again; a run
    that was finished before the archive existed is archived when it is next read."""
    tool = load_tool('compare_real')
    args = types.SimpleNamespace(work_dir=str(tmp_path / 'work'), archive=str(tmp_path / 'arch'),
                                 budget={'scenes-det': {'max_iters': 300}})
    work_dir = tool.run_dir(args, 'scenes-det', 'convneur-m1', 0)
    result = dict(task='scenes-det', run='convneur-m1', seed=0, seconds=1.0)
    tool.save_result(args, work_dir, result)
    archived = tmp_path / 'arch' / 'scenes-det' / 'convneur-m1' / 'seed0.json'
    assert json.loads(archived.read_text()) == result
    shutil.rmtree(tmp_path / 'work')
    assert tool.prepare('scenes-det', 'convneur-m1', 0, args) == (work_dir, result)
    assert not osp.exists(work_dir)  # nothing to train, so no config is written
    assert tool.table_rows(args, 'scenes-det', [], [])[1] == [result]
    with pytest.raises(RuntimeError, match='seed0.json to train it again'):
        tool.test(result, work_dir, 1, args)

    older = tool.run_dir(args, 'scenes-det', 'resnet18', 1)
    os.makedirs(older)
    with open(osp.join(older, 'result.json'), 'w') as f:
        json.dump(dict(result, run='resnet18', seed=1), f)
    assert tool.load_result(args, older)['run'] == 'resnet18'
    assert (tmp_path / 'arch' / 'scenes-det' / 'resnet18' / 'seed1.json').is_file()
    args.archive = ''
    assert tool.archive_path(args, older) is None


def test_compare_real_scenes_ablations_run_by_name_only():
    tool = load_tool('compare_real')
    for task in ('scenes-cls', 'scenes-seg', 'scenes-det-ft'):
        assert not set(tool.SCENES_ABLATIONS) & set(tool.run_names(task))
        assert set(tool.SCENES_ABLATIONS) <= set(tool.run_names(task, everything=True))
    for task in ('cls', 'seg', 'det'):  # the demo tables are unchanged by the scenes' variants
        assert not set(tool.SCENES_ONLY) & set(tool.run_names(task, everything=True))
    assert all(name in tool.CONVNEUR for name in tool.SCENES_ABLATIONS + list(tool.SCENES_ONLY))


def test_compare_real_tables_name_existing_runs_and_scale_their_budget(tmp_path):
    tool = load_tool('compare_real')
    for name, table in tool.TABLES.items():
        for task in table['tasks']:
            assert set(table['runs']) <= set(tool.run_names(task, everything=True)), name
    (tmp_path / 'fashion_scenes').mkdir()
    cmd = [sys.executable, osp.join(REPO, 'tools', 'compare_real.py'), '--list', '--table',
           'pretraining', '--data-root', str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split('\n')[:4] == ['scenes-cls | convneur-m1 | 0', 'scenes-cls | convneur-m1 | 1',
                                          'scenes-cls | convneur-m1 | 2', 'scenes-cls | convneur-m2 | 0']
    assert out.stdout.count('\n') == 3 * len(tool.MAIN_SCENES)
    for bad, message in ((['--scale', '0'], '--scale must be > 0'),
                         (['--jobs', '0'], '--jobs must be >= 1, got 0'),
                         (['--threads', '-1'], '--threads must be >= 1, got -1'),
                         (['--tasks', 'cls'], 'give either --table or --tasks/--runs')):
        out = subprocess.run(cmd + bad, capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 2 and message in out.stderr

    budget = tool.budgets(['scenes-det=100'], scale=2)
    assert budget['scenes-seg'] == {'max_iters': 400} and budget['scenes-det'] == {'max_iters': 200}
    assert budget['scenes-cls'] == {'max_epochs': 2}
    assert tool.budgets([], scale=0.1)['scenes-cls'] == {'max_epochs': 1}  # never below one

    class Args:
        work_dir = 'w'

    Args.budget = budget  # a scaled budget trains in its own folder
    assert tool.run_dir(Args, 'scenes-seg', 'convneur-m1', 0) == \
        osp.join('w', 'scenes-seg-400it', 'convneur-m1', 'seed0')


def test_compare_real_keeps_runs_of_other_budgets_apart():
    tool = load_tool('compare_real')

    class Args:
        work_dir = 'w'
        budget = {'scenes-seg-ft': {'max_iters': 300}, 'scenes-cls': {'max_epochs': 1}}

    assert tool.run_dir(Args, 'scenes-seg-ft', 'resnet18 gcnet', 2) == \
        osp.join('w', 'scenes-seg-ft-300it', 'resnet18_gcnet', 'seed2')
    # the default budget keeps the plain folder, where the fine-tuning finds its pre-training
    assert tool.backbone_checkpoint(Args, 'resnet18 gcnet') == \
        osp.join('w', 'scenes-cls', 'resnet18', 'seed0', 'backbone.pth')

    # a longer pre-training: its own classifier, and fine-tuning from it in a folder of its own
    Args.budget = {'scenes-det-ft': {'max_iters': 300}, 'scenes-cls': {'max_epochs': 2}}
    assert tool.backbone_checkpoint(Args, 'convneur-m1') == \
        osp.join('w', 'scenes-cls-2ep', 'convneur-m1', 'seed0', 'backbone.pth')
    assert tool.run_dir(Args, 'scenes-det-ft', 'convneur-m1', 1) == \
        osp.join('w', 'scenes-det-ft-pre2ep', 'convneur-m1', 'seed1')
    Args.budget['scenes-det-ft'] = {'max_iters': 600}
    assert tool.run_dir(Args, 'scenes-det-ft', 'convneur-m1', 1) == \
        osp.join('w', 'scenes-det-ft-600it-pre2ep', 'convneur-m1', 'seed1')
    assert tool.run_dir(Args, 'scenes-det', 'convneur-m1', 1) == \
        osp.join('w', 'scenes-det', 'convneur-m1', 'seed1')  # from scratch: no pre-training


def test_compare_real_runs_the_pretraining_that_finetuning_needs_first(tmp_path):
    (tmp_path / 'fashion_scenes').mkdir()
    cmd = [sys.executable, osp.join(REPO, 'tools', 'compare_real.py'), '--list', '--tasks',
           'scenes-det-ft', '--runs', 'pvtv2-b0', '--seeds', '1', '2', '--data-root', str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['scenes-cls', '|', 'pvtv2-b0', '|', '0',
                                  'scenes-det-ft', '|', 'pvtv2-b0', '|', '1',
                                  'scenes-det-ft', '|', 'pvtv2-b0', '|', '2']
    bad = subprocess.run(cmd + ['--split', 'test', '--tasks', 'det'], capture_output=True,
                         text=True, cwd=REPO)
    assert bad.returncode == 2 and '--split test needs scenes tasks only' in bad.stderr


def test_compare_real_finetuning_starts_every_backbone_from_its_classifier(tmp_path):
    """Each scenes peer's classifier weights reach its detector and segmenter backbone, whatever
    the backbone's own loading rules (mmdet's PVTv2 ignores ``prefix``); a gated peer starts from
    the bare peer's classifier with its gates at the identity."""
    from mmengine.config import Config

    from convneur_mm.engine.launch import build_task_model
    tool = load_tool('compare_real')

    class Args:
        work_dir = str(tmp_path)

    names = tool.run_names('scenes-det-ft')
    assert set(tool.GATED) <= set(names)
    expected = {}
    for name in tool.SCENES:
        cls_cfg = tool.build_config('scenes-cls', name, 0, str(tmp_path / 'cls'),
                                    {'max_iters': 1})
        classifier = build_task_model(cls_cfg)
        classifier.init_weights()
        with torch.no_grad():  # the classifier (neck and head included) runs
            assert classifier(torch.zeros(1, 3, 56, 56), mode='tensor').shape == (1, 10), name
        work_dir = osp.dirname(tool.backbone_checkpoint(Args, name))
        os.makedirs(work_dir)
        torch.save(dict(state_dict=classifier.state_dict()), osp.join(work_dir, 'epoch_1.pth'))
        with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
            f.write(osp.join(work_dir, 'epoch_1.pth'))
        tool.export_backbone(work_dir)
        expected[name] = classifier.backbone.state_dict()
    for name in names:
        gated = name in tool.GATED
        for task in ('scenes-det-ft', 'scenes-seg-ft'):
            cfg = tool.build_config(task, name, 0, str(tmp_path / task), {'max_iters': 1},
                                    pretrained=tool.backbone_checkpoint(Args, name))
            # the base's own budget variable follows too, so the dumped config reads true
            assert cfg.train_cfg.max_iters == cfg.get('max_iters', 1) == 1, (task, name)
            model = build_task_model(Config.fromstring(cfg.pretty_text, '.py'))
            model.init_weights()
            backbone = model.backbone.backbone if gated else model.backbone
            loaded = backbone.state_dict()
            for key, value in expected[tool.pretraining(name)].items():
                torch.testing.assert_close(loaded[key], value, rtol=0, atol=0,
                                           msg=f'{task} / {name}: {key}')
            if gated:
                assert list(model.backbone.gates) == [
                    n.replace('.', '_') for n in tool.C3_C5_PLACES[tool.pretraining(name)]]
                model.eval()
                x = torch.rand(1, 3, 64, 64)
                with torch.no_grad():
                    for a, b in zip(model.backbone(x), backbone(x)):
                        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize('tool, option', [('tools/benchmark.py', '--convneur-options'),
                                          ('tools/analysis/model_complexity.py', '--cfg-options')])
def test_options_without_a_value_are_named(tool, option):
    out = subprocess.run([sys.executable, osp.join(REPO, tool), option, 'read_mode'],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert f"argument {option}: expected KEY=VALUE, got 'read_mode'" in out.stderr

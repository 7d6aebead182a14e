"""End-to-end training runs of the detection demo: killed and resumed, distributed, bf16."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import convneur_mm  # noqa: F401  (registers the allowlist that _load relies on)

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / 'configs/demo/mask-rcnn_convneur-m1_fpn_nuclei.py')


def _train_cmd(work_dir, demo_options, *extra, **options):
    base = dict(**{'train_cfg.max_iters': 12, 'train_cfg.val_interval': 1000,
                   'default_hooks.checkpoint.interval': 4, 'default_hooks.logger.interval': 2,
                   'randomness.deterministic': True},
                **options)
    return [sys.executable, str(REPO / 'tools/train.py'), DEMO, '--work-dir', str(work_dir),
            *extra, '--cfg-options', *demo_options(**base)]


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)  # our allowlist at work


def _losses(work_dir):
    scalars = next(Path(work_dir).glob('*/vis_data/scalars.json')).read_text().splitlines()
    return [(e['iter'], e['loss']) for e in map(json.loads, scalars) if 'loss' in e]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(demo_options, tmp_path):
    whole, killed = tmp_path / 'whole', tmp_path / 'killed'
    subprocess.run(_train_cmd(whole, demo_options), check=True, capture_output=True)

    # its own process group: the kill below takes its data-loader worker too, which otherwise
    # outlived the test
    proc = subprocess.Popen(_train_cmd(killed, demo_options), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = killed / 'last_checkpoint'
    deadline = time.time() + 300
    while not (marker.exists() and marker.read_text().strip().endswith('iter_8.pth')):
        assert proc.poll() is None and time.time() < deadline, 'run ended before iteration 8'
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a real, unclean interruption
    proc.wait()
    assert not (killed / 'iter_12.pth').exists()

    out = subprocess.run(_train_cmd(killed, demo_options, '--resume'), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = ''.join(p.read_text() for p in killed.glob('*/*.log'))
    assert 'Advance dataloader 8 steps' in logs
    a, b = _load(whole / 'iter_12.pth'), _load(killed / 'iter_12.pth')
    assert a['meta']['iter'] == b['meta']['iter'] == 12
    for key, tensor in a['state_dict'].items():
        assert torch.equal(tensor, b['state_dict'][key]), key
    opt_a, opt_b = a['optimizer']['state'], b['optimizer']['state']
    assert opt_a.keys() == opt_b.keys()
    for idx in opt_a:
        for name, value in opt_a[idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[idx][name])), name


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(demo_options, tmp_path):
    """tools/dist_train.sh with gloo. with_cp, a frozen stage and out_indices that leave stage 4
    unused must not trip DDP (which runs without find_unused_parameters)."""
    env = dict(os.environ, PYTHON=sys.executable, PORT='29517', OMP_NUM_THREADS='1')
    config = tmp_path / 'demo_dump.py'
    config.write_text(f"_base_ = ['{DEMO}']\n"
                      "custom_hooks = [dict(type='convneur_mm.DumpParametersHook')]\n")
    cmd = ['bash', str(REPO / 'tools/dist_train.sh'), str(config), '2', '--work-dir', str(tmp_path),
           '--cfg-options', *demo_options(**{
               'train_cfg.max_iters': 20, 'train_cfg.val_interval': 1000,
               'default_hooks.checkpoint.interval': 20, 'default_hooks.logger.interval': 5,
               'env_cfg.dist_cfg.backend': 'gloo', 'train_dataloader.num_workers': 0,
               'train_dataloader.persistent_workers': False,
               'model.backbone.with_cp': True, 'model.backbone.frozen_stages': 1,
               'model.backbone.out_indices': '(0,1,2)', 'model.neck.in_channels': '[40,80,160]'})]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'parameters_rank{r}.pth', weights_only=True) for r in (0, 1)]
    assert ranks[0]['world_size'] == 2 and ranks[0].keys() == ranks[1].keys()
    assert not any(n.startswith('backbone.stages.3.') for n in ranks[0]['parameters'])
    for name, value in ranks[0]['parameters'].items():
        assert torch.equal(value, ranks[1]['parameters'][name]), name
    losses = [loss for _, loss in _losses(tmp_path)]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses


def test_bf16_autocast_training_steps_stay_finite(demo_options):
    """Three training steps of the detection demo on real tiles, the backbone under CPU bf16
    autocast (mmcv's CPU RoIAlign has no bf16 kernel, so the heads stay in fp32)."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    from convneur_mm.engine.launch import build_task_model

    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict(dict(o.split('=', 1) for o in demo_options()))
    cfg.train_dataloader.update(num_workers=0, persistent_workers=False)
    torch.manual_seed(0)
    model = build_task_model(cfg)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = iter(Runner.build_dataloader(cfg.train_dataloader, seed=0))
    dtypes = []
    model.backbone.stages[0].blocks[0].pwconv1.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    forward = model.backbone.forward

    def bf16_forward(x):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return tuple(o.float() for o in forward(x))
    model.backbone.forward = bf16_forward
    model.train()
    for _ in range(3):
        log_vars = model.train_step(next(loader), optim_wrapper)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values()), log_vars
    assert set(dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in model.parameters())

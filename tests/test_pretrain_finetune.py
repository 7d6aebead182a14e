"""The scenes protocol end to end: pre-train the classifier, then fine-tune the detector from it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from convneur_mm.engine.launch import build_task_model, check_pretrained

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = 'configs/scenes/convneur-m1_fashion-mnist-60k.py'
FINETUNE = {'det': 'configs/scenes/mask-rcnn_convneur-m1_fpn_scenes_pretrained.py',
            'seg': 'configs/scenes/fpn_convneur-m1_scenes-seg_pretrained.py'}


def test_finetune_configs_name_their_pretraining(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoint here
    for config in FINETUNE.values():
        cfg = Config.fromfile(str(REPO / config))
        with pytest.raises(SystemExit, match=f'(?s)epoch_2.pth.*Train it with {PRETRAIN}'):
            check_pretrained(cfg, config)


@pytest.mark.parametrize('task, config', [
    ('scenes-seg-ft', 'configs/scenes/fpn_resnet18-memory-gated_scenes-seg_pretrained.py'),
    ('scenes-det-ft', 'configs/scenes/mask-rcnn_resnet18-memory-gated_fpn_scenes_pretrained.py')])
def test_gated_peer_config_is_the_comparison_run(task, config, tmp_path, monkeypatch):
    """The shipped memory-gated ResNet-18 scenes configs build what tools/compare_real.py's
    `resnet18 memory-gate` runs train, and name that tool's pre-training when it is missing."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('compare_real', REPO / 'tools/compare_real.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shipped = Config.fromfile(str(REPO / config))

    class Args:
        work_dir = 'work_dirs/compare_real'

    run = tool.build_config(task, 'resnet18 memory-gate', 0, str(tmp_path),
                            tool.TASKS[task]['budget'],
                            pretrained=tool.backbone_checkpoint(Args, 'resnet18'))
    assert shipped.model.to_dict() == run.model.to_dict()
    assert shipped.optim_wrapper.to_dict() == run.optim_wrapper.to_dict()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r'(?s)model\.backbone\.backbone\.init_cfg.*Train it with '
                                         r'tools/compare_real\.py --tasks scenes-cls --runs resnet18'):
        check_pretrained(shipped, config)


@pytest.mark.slow
def test_classifier_checkpoint_initialises_the_detector_which_then_learns(tmp_path, monkeypatch):
    subprocess.run([sys.executable, str(REPO / 'tools/prepare_data.py'), '--out',
                    str(tmp_path / 'data'), '--only', 'fashion_scenes', '--scenes', '4', '2', '2',
                    '--scenes-per-class', '4', '2'], check=True)
    # 1. pre-training through the user's command, in a folder where the configs' relative
    # data and work_dirs paths land in tmp_path
    out = subprocess.run([sys.executable, str(REPO / 'tools/train.py'), str(REPO / PRETRAIN)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    checkpoint = tmp_path / 'work_dirs/convneur-m1_fashion-mnist-60k/epoch_2.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    backbone_state = {k[len('backbone.'):]: v for k, v in state.items()
                      if k.startswith('backbone.')}

    monkeypatch.chdir(tmp_path)
    for task, config in FINETUNE.items():
        cfg = Config.fromfile(str(REPO / config))
        check_pretrained(cfg, config)  # the default checkpoint path now exists
        model = build_task_model(cfg)
        model.init_weights()
        loaded = model.backbone.state_dict()
        # every classifier weight of the backbone arrives; only the dense outputs' norms are new
        for key, value in backbone_state.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=f'{task}: {key}')
        assert {k for k in loaded if k not in backbone_state} <= {
            f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')}, task

    # 2. fine-tuning the detector from it: the loss falls
    cfg = Config.fromfile(str(REPO / FINETUNE['det']))
    iters = 20
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = 5
    cfg.work_dir = str(tmp_path / 'finetune')
    # mmengine reuses a visualizer of the same name, with its save_dir, across runners of a
    # process: a name of its own sends the scalars here
    cfg.visualizer.name = f'finetune-{tmp_path.name}'
    Runner.from_cfg(cfg).train()
    scalars = next((tmp_path / 'finetune').glob('*/vis_data/scalars.json'))
    losses = [e['loss'] for e in map(json.loads, scalars.read_text().splitlines()) if 'loss' in e]
    assert len(losses) >= iters // 5 and losses[-1] < 0.85 * losses[0], losses

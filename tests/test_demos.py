"""The offline demos on real images, and what tools/train.py does without a dataset."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

REPO = Path(__file__).resolve().parents[1]


def test_prepared_nuclei_sets(data_root):
    train = json.loads((data_root / 'nuclei/annotations/instances_train.json').read_text())
    val = json.loads((data_root / 'nuclei/annotations/instances_val.json').read_text())
    assert (len(train['images']), len(val['images'])) == (35, 4)
    assert len(train['annotations']) > 300 and len(val['annotations']) > 25
    assert all(a['area'] >= 12 and a['bbox'][2] > 0 for a in train['annotations'])
    semantic = sorted((data_root / 'nuclei/semantic/val').glob('*.png'))
    assert [p.name for p in semantic] == [i['file_name'] for i in val['images']]


@pytest.mark.slow
def test_detection_demo_learns(demo_options, tmp_path):
    cfg = Config.fromfile(str(REPO / 'configs/demo/mask-rcnn_convneur-m1_fpn_nuclei.py'))
    cfg.merge_from_dict(dict(option.split('=', 1) for option in demo_options()))
    iters = 30
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = 5
    [stats_hook] = [h for h in cfg.custom_hooks if h.type == 'convneur_mm.MemoryStatsHook']
    stats_hook.interval = 10
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    scalars = next(tmp_path.glob('*/vis_data/scalars.json'))
    logs = [json.loads(line) for line in scalars.read_text().splitlines()]
    losses = [entry['loss'] for entry in logs if 'loss' in entry]
    assert len(losses) == iters // 5
    # the memory diagnostics of MemoryStatsHook, every 10 iterations, and their plot
    memory = [e for e in logs if 'memory/s0/write_strength' in e]
    assert [e['step'] for e in memory] == [10, 20, 30]
    for e in memory:
        for stage in range(4):
            assert 0 < e[f'memory/s{stage}/write_strength'] < 2
            assert 0 < e[f'memory/s{stage}/gate_mean'] < 1
    plot = subprocess.run([sys.executable, str(REPO / 'tools/analysis/plot_memory_stats.py'),
                           str(tmp_path), '--out', str(tmp_path / 'stats.png')],
                          capture_output=True, text=True)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / 'stats.png').stat().st_size > 1000
    assert losses[-1] < 0.85 * losses[0], losses
    metrics = [entry for entry in logs if 'coco/bbox_mAP' in entry]
    assert metrics and 'coco/segm_mAP' in metrics[0]
    assert (tmp_path / f'iter_{iters}.pth').is_file()
    assert list(tmp_path.glob('*/vis_data/vis_image/*.png'))


def test_train_without_coco_fails_at_once_with_a_pointer_to_the_demo(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / 'tools/train.py'),
                          str(REPO / 'configs/maskrcnn_convneur.py')],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert 'COCO 2017' in out.stderr and 'data/coco/annotations/instances_train2017.json' in out.stderr
    assert 'tools/prepare_data.py' in out.stderr and 'configs/demo/' in out.stderr
    assert 'Traceback' not in out.stderr
    assert not (tmp_path / 'work_dirs').exists()  # nothing built, nothing written


def test_missing_pretrained_checkpoint_fails_clearly(tmp_path, monkeypatch):
    from convneur_mm.engine.launch import check_pretrained
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(str(REPO / 'configs/maskrcnn_convneur.py'))
    with pytest.raises(SystemExit, match=r"(?s)pre-trained checkpoint 'work_dirs/convneur-m2_8xb128_in1k/"
                                         r"epoch_300.pth'.*init_cfg=None"):
        check_pretrained(cfg, 'configs/maskrcnn_convneur.py')
    cfg.model.backbone.init_cfg = None
    check_pretrained(cfg, 'configs/maskrcnn_convneur.py')  # from scratch: nothing to check

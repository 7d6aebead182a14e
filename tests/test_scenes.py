"""Fashion-MNIST scenes: the prepared COCO/semantic set and the global-context tasks."""
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convneur_mm import scenes

REPO = Path(__file__).resolve().parents[1]
SMALL = ['--only', 'fashion_scenes', '--scenes', '6', '3', '3', '--scenes-per-class', '3', '2']


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def scenes_root(tmp_path_factory):
    out = tmp_path_factory.mktemp('scenes')
    subprocess.run([sys.executable, str(REPO / 'tools/prepare_data.py'), '--out', str(out),
                    *SMALL], check=True)
    return out / 'fashion_scenes'


def test_scenes_are_valid_coco_and_semantic_maps(scenes_root):
    from PIL import Image
    from pycocotools import mask as mask_utils
    for split, count in (('train', 6), ('val', 3), ('test', 3)):
        coco = json.loads((scenes_root / 'annotations' / f'instances_{split}.json').read_text())
        assert len(coco['images']) == count and len(coco['categories']) == 10
        assert coco['annotations'], split
        for image in coco['images']:
            array = np.array(Image.open(scenes_root / 'images' / split / image['file_name']))
            semantic = np.array(Image.open(scenes_root / 'semantic' / split / image['file_name']))
            assert array.shape == semantic.shape == (image['height'], image['width'])
            anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
            union = np.zeros_like(semantic, bool)
            for a in anns:
                mask = mask_utils.decode(a['segmentation']).astype(bool)
                assert mask.sum() == a['area'] >= 12
                assert not (union & mask).any()  # visible parts never overlap
                union |= mask
                assert (semantic[mask] == a['category_id']).all()
                assert (array[mask] > 25).all()  # a mask is an item's silhouette
            assert ((semantic > 0) == union).all()
    # the pre-training set: --scenes-per-class 3 2 images of every class, PNGs that exist
    for split, per_class in (('train', 3), ('val', 2)):
        lines = (scenes_root / 'classification' / 'meta' / f'{split}.txt').read_text().split('\n')
        pairs = [line.split() for line in lines if line]
        assert sorted(int(label) for _, label in pairs) == sorted(list(range(10)) * per_class)
        assert all((scenes_root / 'classification' / path).is_file() for path, _ in pairs)


def test_scenes_are_byte_identical_across_runs(scenes_root, tmp_path):
    subprocess.run([sys.executable, str(REPO / 'tools/prepare_data.py'), '--out', str(tmp_path),
                    *SMALL], check=True)
    again = tmp_path / 'fashion_scenes'
    files = sorted(p.relative_to(scenes_root) for p in scenes_root.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob('*') if p.is_file())
    for rel in files:
        assert (scenes_root / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_scene_pixels_come_from_the_given_photographs():
    images = np.arange(30, dtype=np.uint8)[:, None, None].repeat(28, 1).repeat(28, 2) + 30
    labels = np.arange(30) % 10
    rng = np.random.default_rng(0)
    canvas, items = scenes.compose_scene(rng, scenes.Pool(images, labels), 256)
    values = set(np.unique(canvas)) - {0}
    # every painted pixel comes from one of the given photographs
    assert values and values <= set(range(30, 60))


def test_global_context_scenes_encode_the_rule():
    rng = np.random.default_rng(0)
    images = (np.random.default_rng(1).random((200, 28, 28)) * 255).astype(np.uint8)
    pool = scenes.Pool(images, np.arange(200) % 10)
    seen_marker = set()
    for _ in range(20):
        image, labels, instances, info = scenes.compose_task_scene(rng, pool, 'marker', 256, 4)
        items = labels[labels > 0]
        assert set(items) == {1 if info['marker'] else 2}
        red = (image[..., 0] == 255) & (image[..., 1] == 0)  # items are grey, the marker red
        assert red.any() == info['marker']
        seen_marker.add(info['marker'])
        image, labels, instances, info = scenes.compose_task_scene(rng, pool, 'odd', 256, 4)
        odd = instances == info['odd']
        assert odd.any() and (labels[odd] == 1).all() and (labels[(instances > 0) & ~odd] == 2).all()
    assert seen_marker == {True, False}
    with pytest.raises(ValueError, match="task must be one of \\['marker', 'odd'\\]"):
        scenes.compose_task_scene(rng, pool, 'count', 256, 4)


def test_marker_label_marks_exactly_the_cross():
    images = (np.random.default_rng(1).random((50, 28, 28)) * 255).astype(np.uint8)
    pool = scenes.Pool(images, np.arange(50) % 10)
    for seed in range(6):
        plain = scenes.compose_task_scene(np.random.default_rng(seed), pool, 'marker', 256, 4,
                                          marker_side=24)
        ignored = scenes.compose_task_scene(np.random.default_rng(seed), pool, 'marker', 256, 4,
                                            marker_side=24, marker_label=scenes.IGNORE)
        red = (plain[0][..., 0] == 255) & (plain[0][..., 1] == 0)
        assert (ignored[0] == plain[0]).all() and red.any() == plain[3]['marker']
        assert ((ignored[1] == scenes.IGNORE) == red).all()
        assert (ignored[1][~red] == plain[1][~red]).all() and (plain[1][red] == 0).all()
    with pytest.raises(ValueError, match='marker_label must be 0 .* or IGNORE'):
        scenes.compose_task_scene(np.random.default_rng(0), pool, 'marker', 256, 4,
                                  marker_label=1)


def test_global_context_marker_size_and_oracle():
    gc = _load('global_context', 'tools/global_context.py')
    images = (np.random.default_rng(1).random((200, 28, 28)) * 255).astype(np.uint8)
    pool = scenes.Pool(images, np.arange(200) % 10)
    red = {}
    for side in (12, 48):
        rng = np.random.default_rng(3)
        while True:
            image, _, _, info = scenes.compose_task_scene(rng, pool, 'marker', 256, 4,
                                                          marker_side=side)
            if info['marker']:
                break
        red[side] = int(((image[..., 0] == 255) & (image[..., 1] == 0)).sum())
    assert red[12] == 2 * 4 * 12 - 16  # the original cross: arms 4 px wide
    assert red[48] == 2 * 16 * 48 - 256
    # the positive control's head gets the largest red-minus-green value of each image
    probe = gc.build('oracle', 2).eval()
    x = torch.zeros(2, 3, 64, 64)
    x[0, 0, 10, 10] = 2.0
    with torch.no_grad():
        plain = probe.cls(torch.nn.functional.gelu(probe.hidden(x)))
        probe.oracle.weight.fill_(1.0)
        probe.oracle.bias.zero_()
        told = probe(x)
    torch.testing.assert_close(told[1], plain[1])  # no red: the oracle adds nothing
    assert (told[0] - plain[0]).abs().max() > 1e-3


def test_global_context_sensitivity_mode():
    cmd = [sys.executable, str(REPO / 'tools/global_context.py'), '--sensitivity', '--size', '128',
           '--seeds', '0', '1', '--variants', 'memory center', 'local',
           'convnextv2-atto memory-gate center global']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [line.split(' | ') for line in out.stdout.splitlines() if ' | seed ' in line]
    assert [(r[0], r[1]) for r in rows] == [(v, f'seed {s}') for v in
                                            ('memory center', 'local',
                                             'convnextv2-atto memory-gate center global')
                                            for s in (0, 1)]
    by = {(r[0], r[1]): r for r in rows}
    for part, name in ((2, 'input '), (3, 'read '), (4, 'map ')):
        assert by['memory center', 'seed 0'][part].startswith(name)
        changes = [float(v.strip(' %')) for v in
                   by['memory center', 'seed 0'][part].removeprefix(name).split('/')]
        assert len(changes) == 2 and all(c > 0 for c in changes)
    # the seed decides the initialisation, so the two seeds' responses differ
    assert by['memory center', 'seed 0'][2] != by['memory center', 'seed 1'][2]
    assert by['local', 'seed 0'][2] == 'no memory'
    assert by['convnextv2-atto memory-gate center global', 'seed 0'][2].count('%') == 2
    for r in rows:
        ratio, rest = r[-1].removeprefix('head ').split(', consistency ')
        consistency, toward = rest.split(', toward ')
        assert float(ratio) >= 0 and 0 <= float(consistency) <= 1 + 1e-6
        assert 0 <= float(toward) <= 1


def _tiny_probe(**kwargs):
    from convneur_mm import ConvNeur
    backbone = ConvNeur(arch='m1', out_indices=(0, 1), chunk_size=64, max_lr=1e-3, **kwargs)
    backbone.init_weights()
    return scenes.Probe(backbone, backbone.out_channels)


def _noise_pools():
    rng = np.random.default_rng(0)
    pool = scenes.Pool(rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.arange(200) % 10)
    return dict(train=pool, val=pool, test=pool)


def test_marker_response_separates_the_read_from_the_map():
    pool = _noise_pools()['val']
    torch.manual_seed(0)
    plain = scenes.marker_response(_tiny_probe(center_keys=True), pool, 128, 12, num_scenes=2)
    assert set(plain) == {'input', 'map', 'read', 'step', 'key', 'error', 'gain'}
    assert all(len(v) == 2 and all(c > 0 for c in v) for v in plain.values())
    assert plain['step'] == pytest.approx([1, 1])  # the step gates start with zero weights
    # gamma = 1, beta = 0: the memory term's norm is sqrt(d) (unit-RMS LN, a little less through
    # its epsilon against the small initial qW), the unit query's 1
    assert all(0.95 * math.sqrt(32) < g < math.sqrt(32) for g in plain['gain'])
    torch.manual_seed(0)
    zero = _tiny_probe(center_keys=True, zero_init_memory=True)
    response = scenes.marker_response(zero, pool, 128, 12, num_scenes=2)
    # G = 0: its relative change is undefined, but the read behind it responds as before (in
    # stage 2 up to stage 1's gate, which moved by layer scale 1e-6 times the old G)
    assert all(np.isnan(c) for c in response['map'])
    assert response['read'][0] == pytest.approx(plain['read'][0], rel=1e-6)
    assert response['read'][1] == pytest.approx(plain['read'][1], rel=1e-3)
    assert response['input'][0] == pytest.approx(plain['input'][0], rel=1e-6)
    assert zero.training  # the mode is restored
    assert scenes.marker_response(_tiny_probe(memory_placement='none'), pool, 128) is None


def test_tracking_does_not_change_the_run():
    """train_probe's ``track`` is called at init and every log step, and leaves training as it
    would have been without it."""
    runs = []
    for track in (None, lambda m: scenes.marker_response(m, pools['val'], 64, 12, num_scenes=1)):
        torch.manual_seed(0)
        pools = _noise_pools()
        runs.append(scenes.train_probe(_tiny_probe(center_keys=True), pools, 'marker',
                                       np.random.default_rng(0), iters=4, batch=2, size=64,
                                       lr=1e-3, eval_scenes=2, eval_every=0, log_every=2,
                                       track=track))
    untracked, tracked = runs
    assert untracked['track_curve'] == []
    assert [it for it, _ in tracked['track_curve']] == [0, 2, 4]
    assert all(len(r['read']) == 2 for _, r in tracked['track_curve'])
    assert tracked['loss_curve'] == untracked['loss_curve']


def test_a_cut_off_probe_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    """train_probe with a checkpoint: a run killed after its checkpoint and started again ends
    where the uninterrupted run ends, weights, curves and accuracies alike."""
    def run(checkpoint=None):
        torch.manual_seed(0)
        model = _tiny_probe()
        result = scenes.train_probe(model, _noise_pools(), 'odd', np.random.default_rng(0),
                                    iters=5, batch=2, size=64, lr=1e-3, eval_scenes=2,
                                    eval_every=0, log_every=1, checkpoint=checkpoint,
                                    checkpoint_every=2)
        return model.state_dict(), result

    whole_weights, whole = run()
    checkpoint = str(tmp_path / 'seed0.ckpt.pth')
    draws, real_batch = [], scenes.task_batch

    def killed_in_iteration_4(*args, **kwargs):  # draw 1 is the write-strength probe
        draws.append(1)
        if len(draws) == 5:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)
    monkeypatch.setattr(scenes, 'task_batch', killed_in_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint)
    monkeypatch.setattr(scenes, 'task_batch', real_batch)
    assert torch.load(checkpoint, weights_only=True)['progress'].count('"iteration": 2') == 1
    capsys.readouterr()
    weights, resumed = run(checkpoint)
    assert 'resumed at iteration 2/5' in capsys.readouterr().out
    assert resumed['loss_curve'] == whole['loss_curve'] and len(whole['loss_curve']) == 5
    for key in ('val', 'test', 'write_strength_init', 'write_strength_final'):
        assert resumed[key] == whole[key], key
    assert weights.keys() == whole_weights.keys()
    assert all(torch.equal(weights[k], whole_weights[k]) for k in weights)
    # a checkpoint of another model is named, with what to do, not loaded half-way
    torch.save(dict(torch.load(checkpoint, weights_only=True), model={}), checkpoint)
    with pytest.raises(RuntimeError, match='(?s)seed0.ckpt.pth is not one of this run.*Delete it'):
        run(checkpoint)
    with pytest.raises(ValueError, match='checkpoint_every must be an int >= 1, got 0'):
        scenes.train_probe(_tiny_probe(), _noise_pools(), 'odd', np.random.default_rng(0), iters=1,
                           batch=1, size=64, lr=1e-3, checkpoint=checkpoint, checkpoint_every=0)


def test_head_signal_sees_a_consistent_shift():
    """head_signal: a probe whose head input moves by the same vector at every item when the
    cross is there reports consistency 1 and the shift's size against the items' spread."""
    class Shifted(torch.nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def hidden(self, x):  # red-minus-green anywhere -> +shift on channel 0 everywhere
            bit = (x[:, 0] - x[:, 1]).amax((1, 2)) > 1
            h = x[:, :2, 2::4, 2::4].clone()
            h[:, 0] += self.shift * bit.float().view(-1, 1, 1)
            return h

        def logits(self, h, x):  # the 1-vs-2 margin is channel 0 of the head input
            return torch.stack([torch.zeros_like(h[:, 0]), h[:, 0], torch.zeros_like(h[:, 0])], 1)

    rng = np.random.default_rng(0)
    pool = scenes.Pool(rng.integers(0, 256, (200, 28, 28), dtype=np.uint8), np.arange(200) % 10)
    one, two = (scenes.head_signal(Shifted(s), pool, 128, marker_side=12, num_scenes=2)
                for s in (1.0, 2.0))
    assert one['consistency'] == pytest.approx(1.0) == two['consistency']
    assert one['toward'] == 1.0 and scenes.head_signal(
        Shifted(-1.0), pool, 128, marker_side=12, num_scenes=2)['toward'] == 0.0
    # the same spread (the scenes without the cross), twice the shift: twice the ratio
    assert one['ratio'] > 0 and two['ratio'] == pytest.approx(2 * one['ratio'])


def test_global_context_tool_runs_and_resumes(tmp_path):
    cmd = [sys.executable, str(REPO / 'tools/global_context.py'), '--tasks', 'marker',
           '--variants', 'memory', '--seeds', '0', '--iters', '2', '--size', '128',
           '--eval-scenes', '4', '--batch', '2', '--jobs', '1', '--work-dir', str(tmp_path / 'w'),
           '--archive', str(tmp_path / 'archive')]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    [result] = tmp_path.glob('w/stages2-128-it2-b2/marker/memory/seed0.json')
    data = json.loads(result.read_text())
    assert 0 <= data['test']['accuracy'] <= 1 and set(data['write_strength_init']) == {
        'stages.0.memory', 'stages.1.memory'}
    # the memories' response to the cross, at initialisation and at the last iteration
    assert [it for it, _ in data['track_curve']] == [0, 2]
    assert all(len(r['read']) == 2 for _, r in data['track_curve'])
    archived = tmp_path / 'archive' / 'stages2-128-it2-b2' / 'marker' / 'memory' / 'seed0.json'
    assert json.loads(archived.read_text()) == data
    shutil.rmtree(tmp_path / 'w')  # a new machine: the archive alone resumes the table
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert '1 already done, 0 to run' in again.stdout
    table = tmp_path / 'w' / 'stages2-128-it2-b2' / 'results.md'
    assert table.read_text().count('| memory |') == 1
    # a run of another length is not taken for the finished one
    longer = subprocess.run(cmd + ['--iters', '3', '--list'], capture_output=True, text=True,
                            timeout=600)
    assert longer.stdout.strip().endswith('| to run'), longer.stdout + longer.stderr


def test_fixed_keys_variant_blocks_only_the_key_path():
    gc = _load('global_context', 'tools/global_context.py')
    torch.manual_seed(0)
    probe = gc.build('memory center fixed-keys', 2)
    probe(torch.randn(1, 3, 64, 64)).sum().backward()
    for memory in (s.memory for s in probe.backbone.stages):
        c = memory.qkv.out_features // 3
        grad = memory.qkv.weight.grad
        assert grad[c:2 * c].abs().sum() == 0 and memory.qkv.bias.grad[c:2 * c].abs().sum() == 0
        assert grad[:c].abs().sum() > 0 and grad[2 * c:].abs().sum() > 0  # queries and values learn
        assert memory.reduce.weight.grad is None and memory.norm.weight.grad is None
        assert memory.gates.weight.grad is not None


def test_frozen_body_variant_trains_only_the_memories_and_layer_scales():
    gc = _load('global_context', 'tools/global_context.py')
    torch.manual_seed(0)
    probe = gc.build('memory center frozen-body', 2)
    probe(torch.randn(1, 3, 64, 64)).sum().backward()
    backbone = probe.backbone
    assert backbone.stem[0].weight.grad is None
    for stage in backbone.stages:
        for block in stage.blocks:
            assert block.dwconv.weight.grad is None and block.pwconv2.weight.grad is None
            assert block.gamma.grad is not None
        assert stage.memory.qkv.weight.grad.abs().sum() > 0  # the memory learns
    assert all(p.grad is not None for p in probe.lateral.parameters())  # and the head


def test_probe_variants_build_what_their_names_say():
    gc = _load('global_context', 'tools/global_context.py')
    heads = gc.build('memory center heads=4', 2).backbone
    assert [(s.memory.num_heads, s.memory.head_dim) for s in heads.stages] == [(4, 8)] * 2
    add = gc.build('memory center global fusion=add', 2).backbone
    assert add.stages[0].blocks[0].fusion == 'add' and add.stages[0].memory.global_query is not None
    assert add.stages[0].memory.center_keys and add.stages[0].memory.chunk_size == 4096
    # the ablations around the shipped memory: one group per stage, one change each
    narrow = gc.build('memory group=all C_m=16', 2).backbone
    wide = gc.build('memory group=all C_m=64', 2).backbone
    assert [(s.memory.num_heads, s.memory.head_dim) for s in narrow.stages] == [(1, 16)] * 2
    assert [(s.memory.num_heads, s.memory.head_dim) for s in wide.stages] == [(2, 32)] * 2
    assert all(s.memory.chunks_per_group is None for s in narrow.stages + wide.stages)
    # the plug-in gates after each probed stage, or on its input (what ConvNeur's memory reads)
    after = gc.build('convnextv2-atto memory-gate', 2).backbone
    before = gc.build('convnextv2-atto memory-gate before', 2).backbone
    assert after.after == ['stages.0', 'stages.1']
    assert before.after == ['downsample_layers.0', 'downsample_layers.1']
    assert [g.memory.chunk_size for g in before.gates.values()] == [4096, 4096]
    # on M1's local network, the built-in memories' exact arguments on the same maps
    plugged = gc.build('local memory-gate before', 2).backbone
    built_in = gc.build('memory group=all', 2).backbone
    assert plugged.after == ['stages.0.downsample', 'stages.1.downsample']
    assert all(s.memory is None for s in plugged.backbone.stages)
    assert [g.memory.extra_repr() for g in plugged.gates.values()] == \
        [s.memory.extra_repr() for s in built_in.stages]
    assert [g.memory.reduce.in_features for g in plugged.gates.values()] == \
        [s.memory.reduce.in_features for s in built_in.stages]
    # ConvNeur's fusion in the plug-in: every block of each probed stage
    blocks = gc.build('local memory-gate blocks', 2).backbone
    assert blocks.blocks == ['stages.0.blocks', 'stages.1.blocks'] and not blocks.after
    assert [g.memory.extra_repr() for g in blocks.gates.values()] == \
        [s.memory.extra_repr() for s in built_in.stages]
    assert gc.build('convnextv2-atto memory-gate blocks', 2).backbone.blocks == \
        ['stages.0', 'stages.1']
    # the atto with layer scale, bare and under the block gates: only the layer scale differs
    bare = gc.build('convnextv2-atto', 2).backbone
    scaled = gc.build('convnextv2-atto ls=1e-6', 2).backbone
    gated = gc.build('convnextv2-atto ls=1e-6 memory-gate blocks', 2).backbone
    assert bare.stages[0][0].gamma is None
    for atto in (scaled, gated.backbone):
        block = atto.stages[0][0]
        assert block.gamma.eq(1e-6).all() and block.grn is not None
    assert gated.blocks == ['stages.0', 'stages.1']


def test_fisher_exact_test_of_learned_seeds():
    from convneur_mm.stats import fisher_greater
    # 4 of 8 against 0 of 8: C(8,4) / C(16,4) of the ways to place 4 successes in 16 runs
    assert math.isclose(fisher_greater(4, 8, 0, 8), math.comb(8, 4) / math.comb(16, 4))
    assert math.isclose(fisher_greater(3, 3, 0, 3), 1 / 20)
    assert fisher_greater(0, 4, 0, 4) == 1.0 and fisher_greater(0, 4, 4, 4) == 1.0
    with pytest.raises(ValueError, match='0 <= k <= n'):
        fisher_greater(5, 4, 0, 4)


def test_global_context_summary_counts_learned_seeds(tmp_path):
    gc = _load('global_context', 'tools/global_context.py')
    args = gc.argparse.Namespace(size=128, stages=2, iters=2, batch=2, lr=2e-3,
                                 marker=scenes.MARKER, marker_label='background',
                                 work_dir=str(tmp_path), archive='', eval_scenes=4,
                                 seeds=[0, 1, 2], reference='local')

    def summary(task, accuracy):
        """The summary of finished runs with these test (and validation) accuracies per seed."""
        for variant, accs in accuracy.items():
            for seed, acc in enumerate(accs):
                path = Path(gc.result_path(args, task, variant, seed))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(dict(test=dict(accuracy=acc), val=dict(accuracy=acc),
                                                write_strength_final={}, track_curve=[])))
        return gc.summarize(args, [(task, v, s) for v in accuracy for s in range(3)])

    text = summary('marker', {'memory': [1.0, 0.5, 1.0], 'local': [0.5, 0.5, 0.5]})
    assert '| memory | 3 | 0.833 ± 0.717 | (0.833 ± 0.717) | 2 of 3 |' in text
    assert ('learned in 2 of 3 seeds against 0 of 3, one-sided Fisher exact p = 0.200'
            in text)
    # graded accuracies that no seed lifts to 'learned': the intervals decide, no exact test
    text = summary('odd', {'memory': [0.5, 0.55, 0.6], 'local': [0.2, 0.25, 0.2]})
    assert 'memory vs local: memory higher (95% CIs)\n' in text and 'Fisher' not in text
    # an ablation against the shipped memory: the reference's row is loaded though not asked for
    args.reference = 'memory'
    text = gc.summarize(args, [('odd', 'local', s) for s in range(3)])
    assert '| memory | 3 |' in text and 'local vs memory: memory higher (95% CIs)' in text
    out = subprocess.run([sys.executable, str(REPO / 'tools/global_context.py'), '--summary',
                          '--reference', 'nope'], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "--reference 'nope' is not a variant" in out.stderr


def test_global_context_ignored_cross_runs_apart(tmp_path):
    """A run whose cross is ignored by the loss trains with that label and lands in its own
    table, so it never counts as a run of the default task."""
    cmd = [sys.executable, str(REPO / 'tools/global_context.py'), '--tasks', 'marker',
           '--variants', 'local', '--seeds', '0', '--iters', '1', '--size', '128',
           '--eval-scenes', '2', '--batch', '2', '--jobs', '1', '--marker-label', 'ignore',
           '--work-dir', str(tmp_path / 'w'), '--archive', '']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert [p.relative_to(tmp_path / 'w').as_posix() for p in tmp_path.glob('w/**/seed0.json')] \
        == ['stages2-128-ignore-it1-b2/marker/local/seed0.json']
    assert "the cross's pixels ignored by the training loss" in out.stdout

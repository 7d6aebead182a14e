"""ONNX export (checked with onnxruntime), torch.jit.trace and torch.compile against eager."""
import copy
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convneur_mm import ConvNeur, NeuralMemory

REPO = Path(__file__).resolve().parents[1]


def _model(**kwargs):
    torch.manual_seed(0)
    model = ConvNeur('m1', **dict(dict(layer_scale_init_value=1.0, chunk_size=64), **kwargs))
    model.init_weights()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize('classifier, options', [
    (False, []), (True, []),
    # one group of 48 chunks in stage 1: the closed-form recurrence over more than one run, with
    # every state read ('prev') and with only the end state's weights (the default 'final')
    (False, ['--options', 'chunk_size=16', 'read_mode=prev']),
    (False, ['--options', 'chunk_size=16']),
    (False, ['--options', 'center_keys=True', 'global_query=True'])])
def test_onnx_export_matches_pytorch(tmp_path, classifier, options):
    out = tmp_path / 'model.onnx'
    cmd = [sys.executable, str(REPO / 'tools/deploy/export_onnx.py'), '--arch', 'm1',
           '--shape', '96', '128', '--out', str(out), '--check'] + options
    if classifier:
        cmd.append('--classifier')
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [float(e) for e in result.stdout.split('per output:')[1].split(',')]
    assert len(errors) == (1 if classifier else 4)
    assert max(errors) <= 1e-4


@pytest.mark.parametrize('options', [dict(chunks_per_group=1), dict(chunks_per_group=2),
                                     dict(chunks_per_group=None),
                                     dict(center_keys=True, global_query=True)])
def test_jit_trace_matches_eager(options):
    model = _model(chunk_size=16, **options)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        for a, b in zip(model(x), traced(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('chunks_per_group', [1, None])
def test_torch_compile_matches_eager(chunks_per_group):
    model = _model(chunks_per_group=chunks_per_group)
    x = torch.randn(1, 3, 64, 96)
    compiled = torch.compile(model)
    with torch.no_grad():
        for a, b in zip(model(x), compiled(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _compiled_copy(model):
    compiled = copy.deepcopy(model)
    for m in compiled.modules():
        if isinstance(m, NeuralMemory):
            m.compile = True
    return compiled


@pytest.mark.slow
@pytest.mark.parametrize('chunks_per_group', [1, None])
def test_compile_memory_matches_eager_forward_and_backward(chunks_per_group):
    # two chunks in stage 1, one in stage 2: a sequential loop and a one-group scan
    model = _model(chunks_per_group=chunks_per_group, chunk_size=64, out_indices=(0, 1)).train()
    compiled = _compiled_copy(model)
    x = torch.randn(2, 3, 32, 64)
    outs = [sum(o.square().mean() for o in m(x)) for m in (model, compiled)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-6)
    for out in outs:
        out.backward()
    memories = [m.stages[0].memory for m in (model, compiled)]
    assert memories[1]._compiled not in (None, False)  # it really ran compiled
    for (name, a), b in zip(memories[0].named_parameters(), memories[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compiled_memory_trains_under_autocast_at_changing_sizes():
    """What training with compile_memory=True does: bf16 autocast, a new input size per batch
    (the second compiles a dynamic graph, the third reuses it), forward and backward."""
    torch.manual_seed(0)
    eager = NeuralMemory(32, 32, head_dim=16, chunk_size=16).train()
    compiled = _compiled_copy(eager)
    for h, w in ((8, 8), (12, 10), (6, 14)):
        x = torch.randn(2, 32, h, w)
        grads = []
        for mem in (eager, compiled):
            mem.zero_grad(set_to_none=True)
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = mem(x)
            out.float().square().mean().backward()
            grads.append([p.grad for p in mem.parameters()])
        assert compiled._compiled not in (None, False)
        for (name, _), a, b in zip(eager.named_parameters(), *grads):
            torch.testing.assert_close(a, b, rtol=0.05, atol=1e-3, msg=f'{name} at {h}x{w}')


def test_every_compiled_memory_stays_compiled(monkeypatch):
    """More compiled graphs than torch.compile keeps per code object (8): none falls back to
    eager. Dynamo's own backend ('eager') keeps this fast; the cap is dynamo's, not inductor's."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: compile_(fn, backend='eager', **kw))
    torch._dynamo.reset()
    memories = [NeuralMemory(16 * (i + 1), 16, head_dim=16, chunk_size=16, compile=True)
                for i in range(5)]
    traced, eager = [], []
    for mem in memories:
        project = mem.project
        mem.project = lambda x, project=project: (
            (traced if torch.compiler.is_compiling() else eager).append(1) or project(x))
    with torch.no_grad():
        for side in (8, 12):  # a second size: each memory recompiles, dynamically
            for mem in memories:
                mem(torch.randn(1, mem.reduce.in_features, side, side))
    assert len(traced) == 10 and not eager


def test_compile_memory_runs_eagerly_while_tracing_and_after_a_failed_compile(monkeypatch):
    model = _model(compile_memory=True)
    x = torch.randn(1, 3, 64, 96)
    reference = _model()
    with torch.no_grad():
        expected = reference(x)
        # tracing takes the eager path: nothing is compiled
        traced = torch.jit.trace(model, x, check_trace=False)
        assert all(m._compiled is None for m in model.modules() if isinstance(m, NeuralMemory))
        for a, b in zip(expected, traced(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

        def broken(fn, **kwargs):
            def run(*args):
                raise RuntimeError('no C++ compiler here')
            return run
        monkeypatch.setattr(torch, 'compile', broken)
        with pytest.warns(UserWarning, match='torch.compile of NeuralMemory failed.*no C\\+\\+ '
                                             'compiler here.*eagerly'):
            out = model(x)
        for a, b in zip(expected, out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(m._compiled is False for m in model.modules() if isinstance(m, NeuralMemory))
    # copies and pickles never carry a compiled function
    assert copy.deepcopy(model).stages[0].memory._compiled is None
    assert pickle.loads(pickle.dumps(model)).stages[0].memory._compiled is None

"""ONNX export (checked with onnxruntime), torch.jit.trace and torch.compile against eager."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convneur_mm import ConvNeur

REPO = Path(__file__).resolve().parents[1]


def _model(**kwargs):
    torch.manual_seed(0)
    model = ConvNeur('m1', **dict(dict(layer_scale_init_value=1.0, chunk_size=64), **kwargs))
    model.init_weights()
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize('classifier, options', [
    (False, []), (True, []),
    # one group of 48 chunks in stage 1: the closed-form recurrence over more than one run
    (False, ['--options', 'chunk_size=16', 'chunks_per_group=None', 'read_mode=prev'])])
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


@pytest.mark.parametrize('chunks_per_group', [1, 2, None])
def test_jit_trace_matches_eager(chunks_per_group):
    model = _model(chunks_per_group=chunks_per_group, chunk_size=16)
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

"""Export the ConvNeur backbone (or a classifier) to ONNX at a fixed input shape, and check it.

    python tools/deploy/export_onnx.py --arch m2 --shape 224 224 --out convneur-m2.onnx
    python tools/deploy/export_onnx.py --arch m1 --classifier --checkpoint epoch_300.pth --check
    python tools/deploy/export_onnx.py --arch m1 --options chunk_size=4096 max_lr=0.001 --check

The memory writes its chunks in a Python loop, which the exporter unrolls: the graph is valid for
the exported height and width only (the batch size too). ``--check`` runs the file with
onnxruntime and reports the largest relative difference from PyTorch per output.
"""
import argparse
import warnings

import numpy as np
import torch
from mmengine.config import DictAction

from convneur_mm import ConvNeur
from convneur_mm.analysis import ConvNeurClassifier
from convneur_mm.checkpoint import load_pretrained
from convneur_mm.engine.launch import key_value


def build(args):
    if args.classifier:
        model = ConvNeurClassifier(args.arch, num_classes=args.num_classes, **args.options)
        prefix = None  # a classifier checkpoint holds backbone.* and head.* keys
    else:
        model = ConvNeur(args.arch, out_indices=tuple(args.out_indices), **args.options)
        prefix = 'backbone.'
    (model.backbone if args.classifier else model).init_weights()
    if args.checkpoint:
        load_pretrained(model, args.checkpoint, prefix=prefix)
    return model.eval()


def export(model, shape, path, opset=18):
    """Write ``model`` at input ``shape`` to ``path``; returns the example input."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        # The dynamo exporter: the TorchScript one mis-handles the memory's masked padding.
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=opset,
                          input_names=['input'], verbose=False)
    return x


def check(model, x, path):
    """Largest relative error of each onnxruntime output against PyTorch."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    return [float(np.abs(o - r.numpy()).max() / max(np.abs(r.numpy()).max(), 1e-12))
            for o, r in zip(outs, ref)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='m2', choices=sorted(ConvNeur.arch_zoo))
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--classifier', action='store_true',
                        help='backbone + linear head (logits) instead of the backbone maps')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--out-indices', type=int, nargs='+', default=(0, 1, 2, 3))
    parser.add_argument('--checkpoint', help='weights (mmengine or plain state dict)')
    parser.add_argument('--out', help='output file (default: convneur-<arch>[-cls]_HxW.onnx)')
    parser.add_argument('--options', nargs='+', action=DictAction, type=key_value, default={},
                        metavar='KEY=VALUE',
                        help='other ConvNeur arguments, e.g. chunk_size=4096 chunks_per_group=None')
    parser.add_argument('--opset', type=int, default=18)
    parser.add_argument('--check', action='store_true', help='compare onnxruntime with PyTorch')
    args = parser.parse_args()
    out = args.out or (f'convneur-{args.arch}{"-cls" if args.classifier else ""}_'
                       f'{args.shape[0]}x{args.shape[1]}.onnx')
    model = build(args)
    x = export(model, (args.batch_size, 3, *args.shape), out, args.opset)
    print(f'wrote {out} (input {args.batch_size}x3x{args.shape[0]}x{args.shape[1]}, '
          f'opset {args.opset})')
    if args.check:
        errors = check(model, x, out)
        print('onnxruntime vs PyTorch, max relative error per output: '
              + ', '.join(f'{e:.2e}' for e in errors))
        if max(errors) > 1e-4:
            raise SystemExit('mismatch above 1e-4')


if __name__ == '__main__':
    main()

"""Print parameters and FLOPs of the ConvNeur presets next to the paper's numbers.

    python tools/analysis/model_complexity.py                  # M1-M4 classifiers at 224x224
    python tools/analysis/model_complexity.py --shape 512 512  # another input size
    python tools/analysis/model_complexity.py --cfg-options read_mode=final

Counts: parameters of the backbone plus a 1000-class linear head; FLOPs by mmengine's FlopAnalyzer
(one multiply-add = one FLOP), with the global memory branch shown separately.
"""
import argparse

from mmengine.config import DictAction

from convneur_mm import NeuralMemory
from convneur_mm.analysis import PAPER_COMPLEXITY, ConvNeurClassifier, count_flops, count_params
from convneur_mm.engine.launch import key_value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', nargs='+', default=sorted(PAPER_COMPLEXITY),
                        help='presets to measure (default: all)')
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, type=key_value,
                        default={}, metavar='KEY=VALUE',
                        help='extra ConvNeur arguments, e.g. read_mode=final memory_type=mlp')
    parser.add_argument('--tolerance', type=float, default=0.05,
                        help='relative tolerance against the paper (only at 224x224)')
    args = parser.parse_args()
    kwargs = args.cfg_options

    at_224 = tuple(args.shape) == (224, 224)
    print(f'input 1x3x{args.shape[0]}x{args.shape[1]}, counter: mmengine FlopAnalyzer '
          f'(1 multiply-add = 1 FLOP), 1000-class linear head')
    header = '| model | params (M) | FLOPs (G) | memory branch FLOPs |'
    rule = '|---|---|---|---|'
    if at_224:
        header += ' paper params / FLOPs | within ±{:.0%} |'.format(args.tolerance)
        rule += '---|---|'
    print(header)
    print(rule)
    failures = 0
    for arch in args.arch:
        model = ConvNeurClassifier(arch, **kwargs)
        params = count_params(model)
        total, by_module = count_flops(model, (1, 3, *args.shape))
        memory = sum(by_module[name] for name, m in model.named_modules()
                     if isinstance(m, NeuralMemory))
        row = (f'| ConvNeur-{arch.upper()} | {params / 1e6:.2f} | {total / 1e9:.3f} | '
               f'{memory / 1e9:.3f} ({memory / total:.0%}) |')
        if at_224:
            ref = PAPER_COMPLEXITY[arch]
            ok = (abs(params / 1e6 / ref['params_m'] - 1) <= args.tolerance
                  and abs(total / 1e9 / ref['flops_g'] - 1) <= args.tolerance)
            failures += not ok
            row += (f' {ref["params_m"]}M / {ref["flops_g"]}G '
                    f'({params / 1e6 / ref["params_m"] - 1:+.1%} / '
                    f'{total / 1e9 / ref["flops_g"] - 1:+.1%}) | {"yes" if ok else "NO"} |')
        print(row, flush=True)
    if at_224 and failures and not kwargs:
        raise SystemExit(f'{failures} preset(s) outside ±{args.tolerance:.0%} of the paper')


if __name__ == '__main__':
    main()

#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one go, on a machine with a CUDA device:
#   1. tests/test_cuda.py: the memory and the backbone on the GPU against the CPU;
#   2. 224^2: batch-1 latency and throughput at batch 256 (fp16 autocast, channels_last) of
#      M1-M4, their local-only variants and the peers;
#   3. 512^2, 1024^2 and 800x1280: the same at batch 1 (and smaller batches), with the memory's share;
#   4. 224^2 again with the compiled memory (compile_memory=True) beside the eager one.
# Each step writes its own folder under OUT and a failed step does not stop the next. Steps 1-3
# took 5 minutes on an H200; step 4 compiles every memory, 31-43 s per model at batch 1 and
# again at batch 256.
# Needs torch with CUDA, mmengine, pytest and timm (the peers come from timm, so mmcv,
# mmpretrain and mmdet are not needed).
#
#   bash tools/benchmark_gpu.sh [OUT]          (default work_dirs/benchmark_gpu)
#   PYTHON=python3 bash tools/benchmark_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-work_dirs/benchmark_gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

convneur() { for a in m1 m2 m3 m4; do printf 'convneur-%s%s ' "$a" "$1"; done; }
PEERS="resnet18 resnet50 convnextv2-atto convnextv2-femto convnextv2-pico convnextv2-nano \
pvtv2-b0 pvtv2-b1 pvtv2-b2 deit-tiny deit-small poolformer-s12"
DENSE_PEERS="resnet18 convnextv2-atto convnextv2-femto pvtv2-b0 deit-tiny"
BENCH="$PY tools/benchmark.py --peer-library timm --no-plots"

step() {  # name, command...
    local name=$1; shift
    echo "== $name: $*"
    local t=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t)) s"
}

$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name())' || exit 1
step cuda_tests $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider
step throughput_224 $BENCH --sizes 224 --throughput-batch 256 --rounds 20 \
    --models $(convneur '') $(convneur -local) $PEERS --out "$OUT/throughput_224"
step dense $BENCH --sizes 512 1024 det --throughput-batch 256 --rounds 10 \
    --models $(convneur '') $(convneur -local) $DENSE_PEERS --out "$OUT/dense"
step compiled_224 $BENCH --sizes 224 --throughput-batch 256 --rounds 20 \
    --models $(convneur '') $(convneur -compiled) $(convneur -local) --out "$OUT/compiled_224"

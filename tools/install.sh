#!/usr/bin/env bash
# Create (or reuse) the virtual environment at .venv with the pinned OpenMMLab stack.
#
#   bash tools/install.sh            # first run ~35 min on 2 cores (mmcv is compiled), later runs ~2 min
#
# Environment knobs:
#   PYTHON            interpreter for the venv (default: python3.11, else python3)
#   CONVNEUR_VENV     where the venv goes (default: <repo>/.venv)
#   CONVNEUR_CACHE    where built mmcv wheels are kept (default: ~/.cache/convneur-mm)
#   MAX_JOBS          parallel compile jobs for mmcv (default: nproc)
#
# mmcv 2.1.0 has no wheel for modern torch, so it is compiled here. Its compiled ops are bound to the
# exact torch they were built against, so built wheels are cached under a key made of the torch
# version, its git revision, the Python tag and whether CUDA ops were built; pip's own wheel cache is
# never used for it (it would hand back an mmcv built for another torch).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CONVNEUR_VENV:-$REPO/.venv}"
CACHE="${CONVNEUR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convneur-mm}"
MMCV_VERSION=2.1.0
START=$SECONDS

step() { printf '\n[install %4ds] %s\n' $((SECONDS - START)) "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

if [ -z "${PYTHON:-}" ]; then
    PYTHON=$(command -v python3.11 || command -v python3 || true)
fi
[ -n "$PYTHON" ] || die "no python3 found; set PYTHON=/path/to/python3.11"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 9))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.9 is required (3.11 is tested)"

if [ -x "$VENV/bin/python" ]; then
    step "reusing virtual environment $VENV"
else
    step "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check --progress-bar off)
"${PIP[@]}" -q --upgrade pip

step "torch + torchvision (requirements/torch.txt)"
"${PIP[@]}" -r "$REPO/requirements/torch.txt" -r "$REPO/requirements/build.txt"

step "mmengine and the runtime needs of mmcv/mmdet/mmseg/mmpretrain"
"${PIP[@]}" mmengine==0.10.7 addict packaging Pillow pyyaml yapf \
    "numpy==1.26.4" "opencv-python==4.10.0.84"

TORCH_TAG=$("$PY" - <<'EOF'
import platform, sys, torch
cuda = 'cuda' if torch.cuda.is_available() else 'cpu'
git = (torch.version.git_version or 'nogit')[:12]
print(f"torch{torch.__version__}-{git}-cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}-{cuda}ops")
EOF
)
TORCH_TAG=${TORCH_TAG//+/_}

mmcv_ok() {
    # Imports mmcv's compiled ops and runs two of them: an mmcv built for another torch fails here
    # (undefined symbols at import, or a crash at the first op), not in the middle of training.
    "$PY" - <<'EOF' >/dev/null 2>&1
import torch, mmcv
from mmcv.ops import nms, roi_align
assert mmcv.__version__ == '2.1.0', mmcv.__version__
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)[1]
assert keep.tolist() == [0, 2], keep
feat = torch.arange(64.).view(1, 1, 8, 8)
out = roi_align(feat, torch.tensor([[0., 0., 0., 7., 7.]]), (2, 2), 1.0, 2, 'avg', True)
assert out.shape == (1, 1, 2, 2) and torch.isfinite(out).all()
EOF
}

WHEEL_DIR="$CACHE/mmcv-$MMCV_VERSION/$TORCH_TAG"
if mmcv_ok; then
    step "mmcv $MMCV_VERSION already installed and its ops work with this torch ($TORCH_TAG)"
else
    "$PY" -m pip uninstall -y -q mmcv mmcv-full mmcv-lite >/dev/null 2>&1 || true
    WHEEL=$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$WHEEL" ]; then
        step "mmcv $MMCV_VERSION from the cache built for $TORCH_TAG"
        "${PIP[@]}" --no-deps --no-cache-dir --force-reinstall "$WHEEL"
        mmcv_ok || { rm -f "$WHEEL"; die "cached $WHEEL does not work with this torch; removed it, run again to rebuild"; }
    else
        step "building mmcv $MMCV_VERSION from source for $TORCH_TAG (about 30 min on 2 cores)"
        SRC=$(mktemp -d)
        trap 'rm -rf "$SRC"' EXIT
        # --no-build-isolation: the sdist's metadata step imports torch, which must be this venv's.
        "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation --no-cache-dir \
            -d "$SRC" "mmcv==$MMCV_VERSION"
        tar xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$SRC"
        # torch >= 2.10 headers need C++20; mmcv 2.1.0 asks for C++17.
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/mmcv-$MMCV_VERSION/setup.py"
        grep -q -- '-std=c++20' "$SRC/mmcv-$MMCV_VERSION/setup.py" \
            || die "could not switch mmcv's setup.py to C++20 (has the sdist changed?)"
        mkdir -p "$WHEEL_DIR"
        LOG="$CACHE/mmcv-build-$TORCH_TAG.log"
        echo "[install] compiler log: $LOG"
        ( cd "$SRC/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel -v --no-deps --no-build-isolation --no-cache-dir -w "$SRC/dist" . ) \
            >"$LOG" 2>&1 &
        BUILD=$!
        while kill -0 "$BUILD" 2>/dev/null; do
            sleep 60
            printf '[install %4ds] mmcv build: %s\n' $((SECONDS - START)) \
                "$(grep -o '\[[0-9]*/[0-9]*\]' "$LOG" | tail -n 1 || echo 'preparing')"
        done
        wait "$BUILD" || { tail -n 40 "$LOG" >&2; die "mmcv build failed, full log: $LOG"; }
        cp "$SRC"/dist/mmcv-"$MMCV_VERSION"-*.whl "$WHEEL_DIR/"
        WHEEL=$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
        "${PIP[@]}" --no-deps --no-cache-dir --force-reinstall "$WHEEL"
        mmcv_ok || die "freshly built mmcv fails its ops check, see $LOG"
        step "mmcv built and cached at $WHEEL"
    fi
fi

step "mmdet, mmsegmentation, mmpretrain, test tools and convneur_mm (editable)"
"${PIP[@]}" -r "$REPO/requirements/openmmlab.txt" -r "$REPO/requirements/tests.txt"
"${PIP[@]}" --no-deps --no-build-isolation -e "$REPO"

step "checking the stack"
"$PY" - <<'EOF'
import torch, torchvision, mmengine, mmcv, mmdet, mmseg, mmpretrain, convneur_mm
for m in (torch, torchvision, mmengine, mmcv, mmdet, mmseg, mmpretrain, convneur_mm):
    print(f"  {m.__name__:12s} {m.__version__}")
EOF
step "done in $((SECONDS - START)) s; activate with: source ${VENV#$REPO/}/bin/activate"

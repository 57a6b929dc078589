#!/usr/bin/env bash
# Run the paper's setting (configs/cifar10-paper.toml: full-width CIFAR ResNet-18) on one GPU in under 8 minutes.
#
# With smoothcompress installed: `DATA=path/to/cifar10-jpeg.tar.gz bash scripts/gpu_paper.sh`.
#
# On a GPU machine without registry access (torch and most dependencies installed, pip cannot download),
# prepare a folder of what it lacks on a machine that has access, from the repository root:
#   mkdir -p wheels && python3 -m pip download --no-deps --only-binary=:all: -d wheels torch-pruning==1.6.1 tomli-w==1.2.0 \
#     tensorly==0.10.0 opt_einsum==3.4.0
#   cp path/to/cifar10-jpeg.tar.gz wheels/
# copy the repository with wheels/ to the GPU machine and run `WHEELS=wheels bash scripts/gpu_paper.sh` there:
# the wheels are installed into a private folder and DATA defaults to the archive beside them.
# Settings: OUT (default runs), DATA, WHEELS, BUDGET_S (default 470 s; the sweep is resumable, so a rerun continues),
# SMOOTHCOMPRESS_DATA (where the decoded images are cached, default $OUT/data-cache).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
WHEELS=${WHEELS:-}
DATA=${DATA:-${WHEELS:+$WHEELS/}cifar10-jpeg.tar.gz}
BUDGET_S=${BUDGET_S:-470}  # stop before 8 minutes; the sweep is resumable, so a rerun continues

if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$OUT"
export SMOOTHCOMPRESS_DATA=${SMOOTHCOMPRESS_DATA:-$OUT/data-cache} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, smoothcompress; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

start=$(date +%s)
timeout "$BUDGET_S" python3 -m smoothcompress sweep cifar10-paper --out "$OUT/cifar10-paper" --data "$DATA" \
  2>&1 | tee "$OUT/cifar10-paper.log" || echo "sweep stopped after $(( $(date +%s) - start )) s (resumable)"
python3 -m smoothcompress report "$OUT/cifar10-paper" -o "$OUT/cifar10-paper/report" || true
echo "total $(( $(date +%s) - start )) s"

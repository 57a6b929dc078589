#!/usr/bin/env bash
# Run the paper's setting (configs/cifar10-paper.toml: full-width CIFAR ResNet-18) on one GPU in under 8 minutes.
#
# Made for a lent H100 (the `device` tool of this workplace), where the image already has torch and most
# dependencies but no package registry. Prepare on the CPU machine, once:
#   echo /.carry/ >> .git/info/exclude; mkdir -p .carry
#   cp ../shared/data/cifar10-jpeg.tar.gz .carry/
#   python3 -m pip download --no-deps --only-binary=:all: -d .carry torch-pruning==1.6.1 tomli-w==1.2.0
# then run it with `carry: [".carry"]` and the command `bash scripts/gpu_paper.sh`.
# Anywhere else: `bash scripts/gpu_paper.sh` with smoothcompress installed and DATA pointing at the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
DATA=${DATA:-.carry/cifar10-jpeg.tar.gz}
BUDGET_S=${BUDGET_S:-470}  # stop before 8 minutes; the sweep is resumable, so a rerun continues

if ls .carry/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/*.whl
  export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export SMOOTHCOMPRESS_DATA=/tmp/sc-cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, smoothcompress; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

start=$(date +%s)
timeout "$BUDGET_S" python3 -m smoothcompress sweep cifar10-paper --out "$OUT/cifar10-paper" --data "$DATA" \
  2>&1 | tee "$OUT/cifar10-paper.log" || echo "sweep stopped after $(( $(date +%s) - start )) s (resumable)"
python3 -m smoothcompress report "$OUT/cifar10-paper" -o "$OUT/cifar10-paper/report" || true
echo "total $(( $(date +%s) - start )) s"

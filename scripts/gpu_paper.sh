#!/usr/bin/env bash
# Run the paper's setting (configs/cifar10-paper.toml: full-width CIFAR ResNet-18, baseline and nuclear) on one GPU
# within a time budget. The two training runs are the sweep's two shards and go side by side on the one GPU (one
# run's penalty work and compression overlap the other's training); each compresses its own model once trained.
#
# With smoothcompress installed: `DATA=path/to/cifar10-jpeg.tar.gz bash scripts/gpu_paper.sh`.
#
# On a GPU machine without registry access (torch and most dependencies installed, pip cannot download),
# prepare a folder of what it lacks on a machine that has access, from the repository root:
#   mkdir -p wheels && python3 -m pip download --no-deps --only-binary=:all: -d wheels torch-pruning==1.6.1 tomli-w==1.2.0 \
#     tensorly==0.10.0 opt_einsum==3.4.0
#   cp path/to/cifar10-jpeg.tar.gz wheels/
# copy the repository with wheels/ to the GPU machine and run `WHEELS=wheels bash scripts/gpu_paper.sh` there:
# the wheels are installed into a private folder and DATA defaults to the archive beside them. A copy without the
# .git folder cannot name its commit: set SMOOTHCOMPRESS_COMMIT=$(git rev-parse HEAD) (taken before copying), or
# every row records the commit as "unknown".
# Settings: OUT (default runs), DATA, WHEELS, CONFIG (default cifar10-paper), SHARDS (default 2: one process per
# training run), BUDGET_S (default 470 s; the sweep is resumable, so a rerun continues), PYTHON (default python3),
# SMOOTHCOMPRESS_DATA (where the decoded images are cached, default $OUT/data-cache).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
WHEELS=${WHEELS:-}
DATA=${DATA:-${WHEELS:+$WHEELS/}cifar10-jpeg.tar.gz}
CONFIG=${CONFIG:-cifar10-paper}
SHARDS=${SHARDS:-2}
BUDGET_S=${BUDGET_S:-470}  # stop before 8 minutes; the sweep is resumable, so a rerun continues
PYTHON=${PYTHON:-python3}
NAME=$(basename "$CONFIG" .toml)

if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$OUT"
export SMOOTHCOMPRESS_DATA=${SMOOTHCOMPRESS_DATA:-$OUT/data-cache} PYTHONUNBUFFERED=1
# the processes share the cores: each gets its part for the CPU work (decoding, CP and SVD solves)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ($(nproc) + SHARDS - 1) / SHARDS ))}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, smoothcompress; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PYTHON" -m smoothcompress sweep "$CONFIG" --plan --out "$OUT/$NAME" --data "$DATA" --shard all/"$SHARDS"

start=$(date +%s)
pids=()
for i in $(seq 1 "$SHARDS"); do
  timeout "$BUDGET_S" "$PYTHON" -m smoothcompress sweep "$CONFIG" --out "$OUT/$NAME" --data "$DATA" \
    --shard "$i/$SHARDS" >"$OUT/$NAME-shard-$i.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in $(seq 1 "$SHARDS"); do
  rc=0
  wait "${pids[$((i - 1))]}" || rc=$?
  if [ "$rc" -eq 124 ]; then
    echo "shard $i/$SHARDS stopped at the budget after $(( $(date +%s) - start )) s (resumable: run again)"
  elif [ "$rc" -ne 0 ]; then
    echo "shard $i/$SHARDS failed (exit code $rc); the end of its log, $OUT/$NAME-shard-$i.log:"
    failed=1
  fi
  tail -n 5 "$OUT/$NAME-shard-$i.log"
done
"$PYTHON" -m smoothcompress sweep "$CONFIG" --plan --out "$OUT/$NAME" --data "$DATA" --shard all/"$SHARDS" || true
"$PYTHON" -m smoothcompress report "$OUT/$NAME" -o "$OUT/$NAME/report" || true
echo "total $(( $(date +%s) - start )) s"
exit "$failed"

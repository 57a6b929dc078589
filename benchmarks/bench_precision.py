"""Training-step time in bf16 autocast against float32 on the CPU, for the model of the cifar10-cpu tier.

Run: ``.venv/bin/python benchmarks/bench_precision.py [--width 16] [--batch 512] [--threads 1] [--reps 5]
[--steps 4]``. Writes ``benchmarks/results/precision.json``.

A step is what the trainer does per batch: forward (under ``torch.autocast("cpu", torch.bfloat16)`` for bf16),
cross-entropy, backward, SGD step, channels_last images and weights (the trainer's CPU default). Weights, gradients
and optimizer state stay float32 in both. Each repetition builds a fresh model per precision and runs
``--steps`` steps of each, the precisions interleaved (order alternating); the first step of each run (oneDNN
primitive creation) is left out. Reported: the median step time per precision and their ratio
``float32 / bf16`` (above 1: bf16 is faster), and whether the CPU reports AVX512-BF16 (without it, bf16 is
expected to gain little or lose; not measured here). The step has no penalty and no data loading: a penalised
run, whose penalty stays float32, gains less. Other processes on the machine slow both alike (``loadavg`` at the end is
recorded); the ratio is what to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from smoothcompress.files import write_json
from smoothcompress.models import create_model
from smoothcompress.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "precision.json"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def _steps(width: int, batch: int, steps: int, bf16: bool, seed: int) -> list[float]:
    """Seconds of ``steps`` training steps (the first, cold, left out) of a fresh ResNet-18 at ``width``."""
    torch.manual_seed(seed)
    model = create_model("resnet18", width=width).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[1:]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=16, help="ResNet-18 width (16: the cifar10-cpu tier)")
    p.add_argument("--batch", type=int, default=512, help="batch size (512: the cifar10-cpu tier)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: one sweep shard per core)")
    p.add_argument("--reps", type=int, default=5, help="repetitions, each a fresh model per precision")
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (after one cold step)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    times: dict[str, list[float]] = {"float32": [], "bf16": []}
    for rep in range(args.reps):
        order = ("float32", "bf16") if rep % 2 == 0 else ("bf16", "float32")
        for name in order:
            times[name] += _steps(args.width, args.batch, args.steps, name == "bf16", seed=rep)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": "resnet18",
        "width": args.width,
        "batch": args.batch,
        "threads": args.threads,
        "reps": args.reps,
        "seeds": list(range(args.reps)),
        "steps_per_rep": args.steps,
        "avx512_bf16": "avx512_bf16" in _cpu_flags(),
        "step_s": times,
        "median_step_s": median,
        "images_per_s": {k: args.batch / v for k, v in median.items()},
        "ratio_float32_over_bf16": median["float32"] / median["bf16"],
        **provenance("cpu", wall_s=time.perf_counter() - t0, loadavg=os.getloadavg()),
    }
    write_json(RESULTS, result)
    print(f"resnet18 w{args.width}, batch {args.batch}, {args.threads} thread(s), AVX512-BF16: {result['avx512_bf16']}")
    for k, v in median.items():
        print(f"  {k:8s} {1000 * v:7.1f} ms/step  {args.batch / v:6.0f} images/s")
    print(f"  float32 / bf16 = {result['ratio_float32_over_bf16']:.2f}x")
    return result


if __name__ == "__main__":
    main()

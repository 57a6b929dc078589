"""How long the paper's setting takes on this CPU: training steps of the cifar10-paper-cpu preset through the trainer.

The preset (``configs/cifar10-paper-cpu.toml``) trains the full-width CIFAR ResNet-18 (width 64) with bf16
autocast at batch 512. This script times its training steps through :func:`smoothcompress.train`, on batches of
random CIFAR-shaped images (a step's time does not depend on the pixels), in the two ways two cores can run the
preset's two training runs:

* ``one-process-2-threads``: one run with ``torch.set_num_threads(2)``; the runs go one after the other;
* ``two-processes-1-thread``: two runs side by side, each with one thread (the sweep's two shards).

For each it records the images/s of every process (median steady step; see ``bench_train.StepClock``), the
combined images/s of the machine, and the wall time it implies for the preset: one epoch of 50,000 images and the
whole schedule of both runs (compression cells not included). Run it with nothing else on the machine.

Run: ``.venv/bin/python benchmarks/bench_paper_cpu.py [--steps 4]``. Writes ``benchmarks/results/paper_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch
from bench_train import StepClock, synthetic_cifar  # noqa: E402  (benchmarks/, the script's folder)

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance
from smoothcompress.study.experiment import SweepConfig, resolve_config
from smoothcompress.study.training import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "paper_cpu.json"
PRESET = "cifar10-paper-cpu"
TRAIN_IMAGES = 50_000  # CIFAR-10's training split


def _steps(preset: str, threads: int, steps: int, queue) -> None:
    """One training run of ``preset`` for ``steps`` batches on ``threads`` threads; puts the median steady step (s)
    on ``queue``."""
    torch.set_num_threads(threads)
    cfg = SweepConfig.from_toml(resolve_config(preset))
    train = {k: v for k, v in cfg.train.items() if k not in ("data", "dataset", "model", "width")}
    config = TrainConfig.from_dict({**train, "epochs": 1, "device": "cpu"})
    ds = synthetic_cifar(config.batch_size * (steps + 2), 64)
    torch.manual_seed(0)
    model = sc.create_model(cfg.train["model"], num_classes=10, width=cfg.train["width"])
    clock = StepClock(model)
    sc.train(model, ds, config)
    queue.put(statistics.median(clock.steady_steps()))


def measure(preset: str, processes: int, threads: int, steps: int) -> list[float]:
    """Median steady step seconds of each of ``processes`` runs started together on ``threads`` threads each."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_steps, args=(preset, threads, steps, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    out = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="batches per run (>= 3: the first and last are not timed)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--preset", default=PRESET, help="the training settings to time (another preset: a smoke test)")
    args = p.parse_args()
    cfg = SweepConfig.from_toml(resolve_config(args.preset))
    batch, epochs, runs = int(cfg.train["batch_size"]), int(cfg.train["epochs"]), len(cfg.runs)
    t0 = time.perf_counter()
    rows = []
    for name, processes, threads in (("one-process-2-threads", 1, 2), ("two-processes-1-thread", 2, 1)):
        step_s = measure(args.preset, processes, threads, args.steps)
        per_process = [batch / s for s in step_s]
        combined = sum(per_process)
        # one after the other: every run at one process's rate; side by side: runs in pairs, each at its own rate
        epoch_s = TRAIN_IMAGES / statistics.fmean(per_process)
        schedule_h = epoch_s * epochs * runs / processes / 3600
        rows.append({"layout": name, "processes": processes, "threads": threads, "step_s": step_s,
                     "images_per_s": per_process, "combined_images_per_s": combined, "epoch_min": epoch_s / 60,
                     "schedule_h": schedule_h})  # fmt: skip
        print(f"{name:24s} {combined:7.1f} img/s combined, an epoch {epoch_s / 60:5.1f} min per run, "
              f"{epochs} epochs x {runs} runs: {schedule_h:4.2f} h")  # fmt: skip
    meta = provenance("cpu", preset=args.preset, width=cfg.train["width"], batch_size=batch, bf16=cfg.train.get("bf16"),
                      epochs=epochs, runs=runs, steps=args.steps, data="synthetic CIFAR-shaped batches",
                      wall_s=time.perf_counter() - t0)  # fmt: skip
    write_json(args.out, {**meta, "rows": rows})
    print(json.dumps({r["layout"]: round(r["schedule_h"], 2) for r in rows}), f"-> {args.out}")


if __name__ == "__main__":
    main()

"""The sequential reconstruction (svd-seq): what it costs, and how to allocate its ranks.

Takes trained run folders (``smoothcompress train`` or sweep run folders, e.g. the cifar10-cpu tier's ResNet-18 width
16 models) and, on the test split, with 2048 calibration images from the training split (forward passes only):

* times ``svd-seq`` at one rate, calibration included, on the threads given (``--threads``; the target: under 60 s
  for ResNet-18 width 16 on 2 cores), and splits the time into the dense pass and the per-layer solves;
* compares rank allocations for the solve at equal parameters: ``svd-seq`` (ranks from the weights' spectra, the
  paper's allocation) against ``svd-data-seq`` (ranks from the output error on the dense model's inputs, whitened
  truncation as the start), with ``svd-seq+bn`` and ``svd-data+bn`` beside them.

Run: ``.venv/bin/python benchmarks/bench_reconstruction.py RUN [RUN ...] --data ../shared/data/cifar10-jpeg.tar.gz``
Writes ``benchmarks/results/reconstruction.json`` after every row, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import data_provenance, rel  # noqa: E402  (benchmarks/, the script's folder)

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.study.data import load_dataset
from smoothcompress.study.training import TrainConfig, evaluate

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "reconstruction.json"
METHODS = ("svd-data+bn", "svd-seq", "svd-seq+bn", "svd-data-seq")  # compared at equal parameters
RATES = (0.7, 0.8, 0.9)  # the tier's target rates
TIMED_RATE = 0.8
IMAGES = 2048  # calibration images: the tier's [compress] calibration_images


def _timed(model, ds, threads: int) -> dict:
    """Wall time of svd-seq at TIMED_RATE on ``threads`` threads, calibration batches included."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        small = sc.get_method("svd-seq").apply(model, TIMED_RATE, data=ds, images=IMAGES)
        total = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    info = small.sc_compression.details["reconstruction"]
    return {"threads": threads, "rate": TIMED_RATE, "seconds": total, "solve_seconds": info["seconds"],
            "layers": info["layers"], "images": IMAGES}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="trained run folders (model.safetensors, config.toml)")
    p.add_argument("--data", required=True, help="the CIFAR-10 copy the runs were trained on")
    p.add_argument("--threads", type=int, default=2, help="threads for the timing (2: the target's machine)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--timing-only", action="store_true", help="only the timing of svd-seq, not the comparison")
    p.add_argument("--no-timing", action="store_true", help="only the comparison (e.g. while other jobs share the CPU)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="methods compared (default: all)")
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES), help="rates compared (default: 0.7 0.8 0.9)")
    args = p.parse_args()
    ds = load_dataset(args.data)  # the ImageFolder copy (a .tar.gz or a folder)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows, timing = old.get("rows", []), old.get("timing", [])
    done = {(r["run"], r["method"], r["rate"]) for r in rows}
    meta = data_provenance(ds, args.data, script=rel(__file__), images=IMAGES, split="test")

    def save() -> None:
        write_json(args.out, {**meta, "timing": timing, "rows": rows})

    for run in args.runs:
        config = TrainConfig.from_toml(run / "config.toml")
        model = sc.load(run / "model.safetensors").eval()
        name = run.name
        if not args.no_timing and not any(t["run"] == name for t in timing):
            timing.append({"run": name, **_timed(model, ds, args.threads)})
            save()
            print(f"{name}: svd-seq at {TIMED_RATE:.0%} in {timing[-1]['seconds']:.1f} s on {args.threads} threads")
        if args.timing_only:
            continue
        dense = evaluate(model, ds)
        for rate in args.rates:
            for method in args.methods:
                if (name, method, rate) in done:
                    continue
                start = time.perf_counter()
                small = sc.get_method(method).apply(model, rate, data=ds, images=IMAGES)
                seconds = time.perf_counter() - start
                acc = evaluate(small, ds)
                rows.append(
                    {
                        "run": name, "reg": config.reg, "weight": config.weight, "seed": config.seed,
                        "method": method, "rate": rate, "rate_achieved": small.sc_compression.rate_achieved,
                        "params": sc.count_params(small), "accuracy": acc, "dense_accuracy": dense,
                        "seconds": seconds,
                    }
                )  # fmt: skip
                done.add((name, method, rate))
                save()
                print(f"{name:<48} {method:<13} {rate:.2f}  {100 * acc:.2f}  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

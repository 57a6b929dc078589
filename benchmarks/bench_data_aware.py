"""Data-aware compression: how much do calibration images buy, with no gradient step?

Takes trained run folders (``smoothcompress train`` output, e.g. the cifar10-cpu preset's settings: ResNet-18 width
16, 5 epochs, CIFAR-10) and compresses each with every method at every rate, on the test split:

* data-free: ``svd`` (the paper's method), ``filter``, ``magnitude``;
* with calibration images from the training split (forward passes only): ``svd+bn``, ``svd-data``,
  ``svd-data+bn``, ``filter+bn``, ``magnitude+bn``.

It also evaluates the dense model after BatchNorm recalibration (with and without the training augmentation), a
damping scan of the whitened truncation on the first model, and the cost of calibration plus compression of a
full-width ResNet-18 (width 64).

Run: ``.venv/bin/python benchmarks/bench_data_aware.py runs/a runs/b ... --data ../shared/data/cifar10-jpeg.tar.gz``
Writes ``benchmarks/results/data_aware.json`` after every row, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import data_provenance, rel  # noqa: E402  (benchmarks/, the script's folder)

import smoothcompress as sc
from smoothcompress.accounting import RateUnreachable
from smoothcompress.calibration import calibrate, recalibrate_bn
from smoothcompress.files import write_json
from smoothcompress.study.data import load_dataset
from smoothcompress.study.training import TrainConfig, evaluate

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "data_aware.json"
METHODS = ("svd", "svd+bn", "svd-data", "svd-data+bn", "filter", "filter+bn", "magnitude", "magnitude+bn")
RATES = (0.5, 0.7, 0.8, 0.9)
DAMPINGS = (0.0, 1e-2, 1e-1)  # scanned at DAMPING_RATE on the first model
DAMPING_RATE = 0.8
BN_VARIANTS = (  # (variant, relative to the dense model, training augmentation), scanned on the first model
    ("absolute", False, False),
    ("absolute+augment", False, True),
    ("relative", True, False),
)


def _key(row: dict) -> tuple:
    return row["run"], row["method"], row["rate"], row.get("variant", "")


class Bench:
    """Rows of the benchmark, written to ``out`` (with provenance) after every new row."""

    def __init__(self, out: Path, meta: dict):
        old = json.loads(out.read_text()) if out.exists() else {}
        self.out, self.meta = out, meta
        self.rows: list[dict] = [r for r in old.get("rows", []) if r.get("images") == meta["images"]]
        self.done = {_key(r) for r in self.rows}
        self.extra: dict = old.get("speed", {}) and {"speed": old["speed"]}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add(_key(row))
        self.save()
        acc = "out of reach" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}"
        print(f"{row['run']:<14} {row['method']:<13} {row.get('variant', ''):<12} {row['rate']:.2f}  {acc}", flush=True)

    def save(self) -> None:
        write_json(self.out, {**self.meta, **self.extra, "rows": self.rows, "summary": summarize(self.rows)})


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (regularizer, method, variant, rate)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["accuracy"] is not None:
            groups.setdefault((r["reg"], r["method"], r.get("variant", ""), r["rate"]), []).append(r["accuracy"])
    out = []
    for (reg, method, variant, rate), accs in sorted(groups.items()):
        out.append(
            {
                "reg": reg,
                "method": method,
                "variant": variant,
                "rate": rate,
                "seeds": len(accs),
                "mean": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            }
        )
    return out


def bench_run(bench: Bench, run: Path, ds, images: int, rates, scan_damping: bool) -> None:
    config = TrainConfig.from_toml(run / "config.toml")
    model = sc.load(run / "model.safetensors").eval()
    name = f"{config.reg}-s{config.seed}"
    base = {"run": name, "run_dir": rel(run), "reg": config.reg, "weight": config.weight, "seed": config.seed}
    base |= {"epochs": config.epochs, "width": config.width, "images": images, "calibration_split": "train"}

    def row(method: str, rate: float, fn, variant: str = "") -> None:
        if (name, method, rate, variant) in bench.done:
            return
        t0 = time.perf_counter()
        try:
            small = fn()
        except RateUnreachable:
            acc, params = None, None
        else:
            acc, params = evaluate(small, ds), sc.count_params(small, nonzero=method.startswith("magnitude"))
        r = {**base, "method": method, "variant": variant, "rate": rate, "accuracy": acc, "params": params}
        bench.add(r | {"params_dense": sc.count_params(model), "wall_s": time.perf_counter() - t0})

    row("dense", 0.0, lambda: model)
    for augment in (False, True):
        row("dense+bn", 0.0, lambda a=augment: recalibrate_bn(_copy(model), ds, images, augment=a),
            "augment" if augment else "")  # fmt: skip
    damping_keys = [(name, "svd-data", DAMPING_RATE, f"damping={d:g}") for d in DAMPINGS] if scan_damping else []
    cal = None  # computed once per model, and only when a row still needs it (a resumed run skips it)
    if any((name, m, r, "") not in bench.done for m in METHODS if "data" in m for r in rates) or any(
        k not in bench.done for k in damping_keys
    ):
        t0 = time.perf_counter()
        cal = calibrate(model, ds, images)
        bench.meta.setdefault("calibration_s", {})[name] = time.perf_counter() - t0
    for method_name in METHODS:
        method = sc.get_method(method_name)
        for rate in rates:
            kwargs = {"data": ds, "images": images, "calibration": cal} if method.uses_data() else {}
            row(method_name, rate, lambda m=method, r=rate, k=kwargs: m.apply(model, r, **k))
    if scan_damping:  # how BatchNorm statistics are re-estimated: the default is relative to the dense model
        compressed: dict[float, torch.nn.Module] = {}  # plain SVD per rate, made on first use

        def plain(rate: float) -> torch.nn.Module:
            if rate not in compressed:
                compressed[rate] = sc.compress(model, rate)
            return _copy(compressed[rate])

        for variant, reference, augment in BN_VARIANTS:
            for rate in rates:
                ref = model if reference else None
                row("svd+bn", rate, lambda r=rate, ref=ref, a=augment: recalibrate_bn(
                    plain(r), ds, images, reference=ref, augment=a), variant)  # fmt: skip
        svd_data = sc.get_method("svd-data")
        for damping in DAMPINGS:

            def damped(d: float = damping) -> torch.nn.Module:
                return svd_data.apply(model, DAMPING_RATE, calibration=dataclasses.replace(cal, damping=d))

            row("svd-data", DAMPING_RATE, damped, f"damping={damping:g}")


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def bench_speed(ds, images: int, reps: int) -> dict:
    """Wall time of calibrate + compress(svd-data) of a ResNet-18 at width 64 (the paper's size)."""
    torch.manual_seed(0)
    model = sc.create_model("resnet18", num_classes=10, width=64).eval()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        cal = calibrate(model, ds, images)
        t1 = time.perf_counter()
        sc.compress(model, rate=0.8, calibration=cal)
        t2 = time.perf_counter()
        times.append({"calibrate_s": t1 - t0, "compress_s": t2 - t1, "total_s": t2 - t0})
    total = statistics.median(t["total_s"] for t in times)
    return {"model": "resnet18 width 64 (random init)", "images": images, "reps": times, "median_total_s": total}


def print_table(summary: list[dict]) -> None:
    rates = sorted({s["rate"] for s in summary if s["rate"] > 0})
    print(f"\n{'reg':<9} {'method':<14} {'dense':>7} " + " ".join(f"{int(100 * r):>3}%  " for r in rates))
    by = {(s["reg"], s["method"], s["variant"], s["rate"]): s for s in summary}
    for reg in sorted({s["reg"] for s in summary}):
        dense = by.get((reg, "dense", "", 0.0))
        for method in METHODS:
            cells = [by.get((reg, method, "", r)) for r in rates]
            text = " ".join(f"{100 * c['mean']:6.2f}" if c else "     -" for c in cells)
            print(f"{reg:<9} {method:<14} {100 * dense['mean'] if dense else float('nan'):7.2f} {text}")


def markdown_table(summary: list[dict]) -> str:
    """The README's table: mean (and spread over seeds) per regularizer, method and rate."""
    rates = sorted({s["rate"] for s in summary if s["rate"] > 0})
    by = {(s["reg"], s["method"], s["variant"], s["rate"]): s for s in summary}
    head = "| model | method | seeds | dense | " + " | ".join(f"{int(100 * r)}%" for r in rates) + " |"
    lines = [head, "|" + "---|" * (4 + len(rates))]
    for reg in sorted({s["reg"] for s in summary}):
        dense = by.get((reg, "dense", "", 0.0))
        for method in METHODS:
            cells = [by.get((reg, method, "", r)) for r in rates]
            if not any(cells):
                continue
            seeds = max(c["seeds"] for c in cells if c)
            text = " | ".join(
                (f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" if c["seeds"] > 1 else f"{100 * c['mean']:.2f}")
                if c else "-"
                for c in cells
            )  # fmt: skip
            d = f"{100 * dense['mean']:.2f}" if dense else "-"
            lines.append(f"| {'baseline' if reg == 'none' else reg} | {method} | {seeds} | {d} | {text} |")
    return "\n".join(lines)


def check_targets(summary: list[dict]) -> dict:
    """The issue's targets, judged from the summary (means over seeds)."""
    by = {(s["reg"], s["method"], s["variant"], s["rate"]): s["mean"] for s in summary}
    out = {}
    dense, plain = by.get(("none", "dense", "", 0.0)), by.get(("none", "svd", "", 0.8))
    data_aware = ("svd+bn", "svd-data", "svd-data+bn")
    if dense is not None and plain is not None:
        best = max((by.get(("none", m, "", 0.8), -1.0), m) for m in data_aware)
        need = plain + 2 / 3 * (dense - plain)
        out["baseline_80_gap_recovered"] = {
            "dense": dense, "svd": plain, "best": best[0], "best_method": best[1], "needed": need,
            "met": best[0] >= need,
        }  # fmt: skip
    worst = []
    for (reg, method, variant, rate), acc in by.items():
        if method in data_aware and not variant and (reg, "svd", "", rate) in by:
            worst.append((acc - by[(reg, "svd", "", rate)], reg, method, rate))
    if worst:
        d, reg, method, rate = min(worst)
        out["worst_data_aware_vs_svd"] = {
            "points": 100 * d,
            "reg": reg,
            "method": method,
            "rate": rate,
            "met": d >= -0.003,
        }
    filt = by.get(("none", "filter+bn", "", 0.5))
    if filt is not None:
        out["filter_bn_50"] = {"accuracy": filt, "filter": by.get(("none", "filter", "", 0.5))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders holding model.safetensors and config.toml")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    p.add_argument("--speed-reps", type=int, default=2, help="repetitions of the width-64 timing (0: skip)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--markdown", action="store_true", help="print the README table from --out and stop")
    args = p.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(args.out.read_text())["summary"]))
        return
    ds = load_dataset(args.data)
    meta = data_provenance(
        ds,
        args.data,
        images=args.images,
        split="test",
        threads=torch.get_num_threads(),
        command="benchmarks/bench_data_aware.py " + " ".join(rel(r) for r in args.runs),
    )
    bench = Bench(args.out, meta)
    start = time.perf_counter()
    for i, run in enumerate(args.runs):
        bench_run(bench, run, ds, args.images, args.rates, scan_damping=i == 0)
    if args.speed_reps:
        bench.extra["speed"] = bench_speed(ds, args.images, args.speed_reps)
        seconds = bench.extra["speed"]["median_total_s"]
        print(f"calibrate + compress, ResNet-18 width 64, {args.images} images: {seconds:.1f} s")
    bench.meta["wall_s"] = time.perf_counter() - start
    bench.meta["loadavg_end"] = os.getloadavg()
    summary = summarize(bench.rows)
    bench.extra["targets"] = check_targets(summary)
    bench.save()
    print_table(summary)
    for k, v in bench.extra["targets"].items():
        print(k, v)
    print(f"wrote {rel(args.out)}")


if __name__ == "__main__":
    main()

"""Latency budget (``compress(model, latency=F)``): requested against measured speed-up, per runtime and batch.

The CIFAR ResNet-18 at width 16, or the width given (random init: time depends only on the layer shapes; weights
and input in channels_last) is compressed to keep at most 70%, 50% and 35% of its measured forward time, in each runtime
(``eager``: PyTorch on the CPU, ``onnxruntime``: the exported model on the CPU provider) at batch 128 and batch 1,
with the rank multiple chosen from the latency table (``rank_multiple=None``). Each compression measures (or reads
from the cache) its latency table on this machine, times its plans end to end (the rounds of
:func:`smoothcompress.compress` under a latency budget) and records them.

Then, independently, the dense and the compressed model are timed in turns in the same run (the order rotates every
repetition; two warm-up passes each), and the measured speed-up is the median over repetitions of the dense time
divided by the compressed time of the same repetition. The requested speed-up is ``1 / latency``; the benchmark's
target is ``measured / requested >= 0.9``. A budget the model cannot reach on the runtime is listed with the
smallest reachable fraction (``LatencyUnreachable``).

Run: ``.venv/bin/python benchmarks/bench_latency.py [--threads 2] [--reps 7] [--reps1 30] [--width 64 --out F]``;
``--quick`` is a
smoke run (budget 0.95, batch 8, few repetitions, written to a separate file unless ``--out`` is given). Writes
``benchmarks/results/latency.json`` with provenance (commit, device, threads, versions, load average).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import interleaved, rel  # noqa: E402  (benchmarks/, the script's folder)
from torch import nn

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.latency import LatencyUnreachable, Timing
from smoothcompress.provenance import provenance

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "latency.json"
QUICK = REPO / "benchmarks" / "results" / "latency-quick.json"
SHAPE = (3, 32, 32)
BUDGETS = (0.7, 0.5, 0.35)
RUNTIMES = ("eager", "onnxruntime")
TARGET = 0.9  # measured speed-up / requested speed-up


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def runners(models: dict[str, nn.Module], runtime: str, batch: int, threads: int, tmp: Path) -> dict:
    """One callable per model: a forward pass on a random input of batch ``batch`` in ``runtime``."""
    x = torch.randn(batch, *SHAPE).contiguous(memory_format=torch.channels_last)
    if runtime == "eager":

        def run(m):
            def forward():
                with torch.inference_mode():
                    m(x)

            return forward

        return {name: run(m.eval()) for name, m in models.items()}
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    feed = {"input": x.contiguous().numpy()}
    out = {}
    for i, (name, m) in enumerate(models.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = sc.export_onnx(m, tmp / f"{batch}-{i}.onnx", (batch, *SHAPE), dynamic_batch=False)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out[name] = lambda s=session: s.run(None, feed)
    return out


def cell(dense: nn.Module, runtime: str, batch: int, args, tmp: Path) -> list[dict]:
    """Every budget of one (runtime, batch): compress, then time dense and compressed in turns."""
    timing = Timing(threads=args.threads, reps=args.table_reps, cache=args.cache)
    shape = (batch, *SHAPE)
    rows, models = [], {"dense": dense}
    for budget in args.budgets:
        t = time.perf_counter()
        row = {"runtime": runtime, "batch": batch, "latency": budget, "requested_speedup": 1 / budget}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a missed budget is in the record and in this row
                small = sc.compress(dense, latency=budget, input_shape=shape, runtime=runtime, timing=timing)
        except LatencyUnreachable as e:
            rows.append({**row, "unreachable": str(e)})
            print(f"{runtime} batch {batch} latency {budget}: {e}", flush=True)
            continue
        record = small.sc_compression
        lat = record.details["latency"]
        row |= {
            "compress_s": round(time.perf_counter() - t, 2),
            "rank_multiple": lat["rank_multiple"],
            "table_fraction": lat["table_fraction"],
            "record_fraction": lat["measured_fraction"],
            "record_met": lat["met"],
            "rounds": lat["rounds"],
            "table_measured_now": lat["table"]["measured_now"],
            "table_entries": lat["table"]["entries"],
            "rate": record.rate_achieved,
            "flops_fraction": record.flops_achieved,
            "ranks": {k: v[1] for k, v in record.details["ranks"].items()},
        }
        rows.append(row)
        models[f"latency={budget}"] = small
    reps = args.reps1 if batch == 1 else args.reps
    speed = interleaved(runners(models, runtime, batch, args.threads, tmp), reps)
    for row in rows:
        name = f"latency={row['latency']}"
        if name not in speed:
            continue
        row["measured_speedup"] = speed[name]["speedup"]
        row["measured_speedup_range"] = [speed[name]["speedup_min"], speed[name]["speedup_max"]]
        row["dense_ms"], row["compressed_ms"] = speed["dense"]["ms"], speed[name]["ms"]
        row["measured_over_requested"] = row["measured_speedup"] / row["requested_speedup"]
        row["meets_target"] = row["measured_over_requested"] >= TARGET
    return rows


def print_rows(rows: list[dict]) -> None:
    head = f"{'runtime':<12} {'batch':>5} {'budget':>6} {'req':>5} {'meas':>5} {'ratio':>5} {'table':>6} {'k':>3}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        lead = f"{r['runtime']:<12} {r['batch']:>5} {r['latency']:>6} {r['requested_speedup']:>5.2f}"
        if "unreachable" in r:
            print(f"{lead} unreachable ({r['unreachable'].split('Ask for ')[-1]})")
            continue
        mark = "*" if r["meets_target"] else " "
        print(f"{lead} {r['measured_speedup']:>5.2f} {r['measured_over_requested']:>5.2f}{mark}"
              f"{r['table_fraction']:>6.3f} {r['rank_multiple']:>3}")  # fmt: skip
    print(f"* measured / requested speed-up >= {TARGET}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions at batch 128")
    ap.add_argument("--reps1", type=int, default=30, help="interleaved repetitions at batch 1")
    ap.add_argument("--table-reps", type=int, default=5, help="timed passes per latency-table entry")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 1])
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    ap.add_argument("--cache", default=None, help="latency cache file (default: the user cache)")
    ap.add_argument("--quick", action="store_true", help="smoke run: budget 0.95, batch 8, few repetitions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=16, help="ResNet-18 width (64: the paper's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.budgets, args.batches, args.reps, args.reps1, args.table_reps = [0.95], [8], 3, 3, 2
    out = Path(args.out) if args.out else QUICK if args.quick else RESULTS
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dense = sc.create_model("resnet18", num_classes=10, width=args.width).eval().to(memory_format=torch.channels_last)
    t0, load = time.time(), _load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            for batch in args.batches:
                rows += cell(copy.deepcopy(dense), runtime, batch, args, Path(tmp))
                print(f"{runtime} batch {batch} done", flush=True)
    result = {
        "benchmark": "latency",
        "model": f"resnet18 (CIFAR, width {args.width}, random init, channels_last)",
        "target": f"measured speed-up / requested speed-up (1 / latency) >= {TARGET}",
        "quick": args.quick,
        "reps": {"batch1": args.reps1, "other": args.reps, "table": args.table_reps},
        "cache": "the user cache (smoothcompress.latency.cache_path)" if args.cache is None else rel(args.cache),
        "rows": rows,
        "provenance": {
            **provenance(),
            "threads": args.threads,
            "onnxruntime": _ort_version(),
            "wall_time_s": round(time.time() - t0, 1),
            "load_average_before": load,
            "load_average_after": _load(),
        },
    }
    write_json(out, result)
    print_rows(rows)
    print(f"wrote {rel(out)}")


def _ort_version() -> str | None:
    try:
        import onnxruntime as ort

        return ort.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()

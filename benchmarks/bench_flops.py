"""FLOPs budget (``compress(model, flops=F)``): measured CPU speed-up against the FLOP ratio, and accuracy.

Latency (default): the CIFAR ResNet-18 at width 64 (random init: speed depends only on the layer shapes) is
compressed to keep at most 70%, 50% and 35% of its FLOPs, with every rank a multiple of 1, 8 and 16
(``rank_multiple``), plus the parameter budget ``rate=0.7`` for reference. Each model is timed at batch 1 and
batch 128 in two runtimes:

* ``torch``: PyTorch eager on CPU, weights and input in channels_last, ``torch.inference_mode``;
* ``onnx``: onnxruntime (CPU provider, all graph optimisations) on the file :func:`smoothcompress.export_onnx`
  writes.

All models of a runtime and batch are timed in turns (dense, v1, v2, ..., dense, v1, ...; the order rotates every
repetition) after two warm-up passes each; the speed-up of a variant is the median over repetitions of the
dense time divided by its time in the same repetition (the machine is shared and noisy). A variant "meets" the
target when its speed-up is at least 0.8 x its FLOP ratio (dense FLOPs / compressed FLOPs), i.e.
``speedup >= 0.8 / flops_fraction``; ``works`` lists, per budget, runtime and batch, the rank multiples that meet
it.

Accuracy (``--accuracy RUN_DIR ...``): trained run folders (``smoothcompress train`` output, e.g.
``runs/ckpt/none-s0``: ResNet-18 width 16 on CIFAR-10 JPEG) are compressed to the same FLOPs budgets (ranks
multiples of 1 and 8) and evaluated on the test split, next to the parameter allocation (``rate=``) that keeps the
same FLOPs (the smallest rate whose plan is within the budget, found by bisection). Run folders without a
``model.safetensors`` are listed as missing.

Run: ``.venv/bin/python benchmarks/bench_flops.py [--reps 5] [--no-latency] [--accuracy runs/ckpt/*]``. Writes
``benchmarks/results/flops.json``; a run updates only the sections it measured (``latency``, ``accuracy``), each
with its own provenance, thread count and load average. Accuracy rows of runs that a later call does not evaluate
are kept (with the earlier provenance), so checkpoints can be added as they appear.
"""

from __future__ import annotations

import argparse
import copy
import json
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
from smoothcompress.accounting import RateUnreachable
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "flops.json"
SHAPE = (3, 32, 32)
BUDGETS = (0.7, 0.5, 0.35)
MULTIPLES = (1, 8, 16)
TARGET = 0.8  # a variant meets the target when speedup >= TARGET * FLOP ratio


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _section_provenance(t0: float, threads: int, load_before) -> dict:
    return {
        **provenance(),
        "threads": threads,
        "wall_time_s": round(time.time() - t0, 1),
        "load_average_before": load_before,
        "load_average_after": _load(),
    }


# ---------------------------------------------------------------------------------------------------------
# Latency


def torch_runners(models: dict[str, nn.Module], batch: int) -> dict:
    x = torch.randn(batch, *SHAPE).contiguous(memory_format=torch.channels_last)

    def runner(m):
        def run():
            with torch.inference_mode():
                m(x)

        return run

    return {name: runner(m) for name, m in models.items()}


def onnx_runners(paths: dict[str, Path], batch: int, threads: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    x = np.random.default_rng(0).standard_normal((batch, *SHAPE), dtype=np.float32)

    def runner(path):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"input": x})

    return {name: runner(p) for name, p in paths.items()}


def latency(args) -> dict:
    torch.manual_seed(args.seed)
    dense = sc.create_model("resnet18", width=64).eval()
    shape1 = (1, *SHAPE)
    flops_dense = sc.count_flops(dense, shape1)
    models: dict[str, nn.Module] = {"dense": dense}
    rows: dict[str, dict] = {}
    specs = [(f"flops={b}/x{k}", {"flops": b, "rank_multiple": k}) for b in args.budgets for k in args.multiples]
    specs.append(("rate=0.7/x1", {"rate": 0.7, "input_shape": shape1}))  # the parameter budget, for reference
    for name, kwargs in specs:
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = sc.compress(dense, **kwargs).eval()
        except RateUnreachable as e:
            rows[name] = {**kwargs, "error": str(e)}
            print(f"{name}: {e}", flush=True)
            continue
        record = small.sc_compression
        fraction = sc.count_flops(small, shape1) / flops_dense
        assert record.flops_achieved is None or abs(record.flops_achieved - fraction) < 1e-12
        rows[name] = {
            "budget": kwargs.get("flops"),
            "rank_multiple": kwargs.get("rank_multiple", 1),
            "flops_fraction": fraction,
            "flop_ratio": 1 / fraction,
            "rate": record.rate_achieved,
            "params": sc.count_params(small),
            "compress_s": round(time.perf_counter() - t, 2),
            "ranks": {k: v[1] for k, v in record.details["ranks"].items()},
        }
        models[name] = small
        print(f"{name}: kept FLOPs {fraction:.3f} (ratio {1 / fraction:.2f}x), rate {record.rate_achieved:.3f}")
    speed: dict[str, dict] = {}
    cl = {n: copy.deepcopy(m).to(memory_format=torch.channels_last) for n, m in models.items()}
    for batch, reps in ((1, args.reps1), (128, args.reps)):
        speed[f"torch/batch{batch}"] = interleaved(torch_runners(cl, batch), reps)
        print(f"torch batch {batch} done", flush=True)
    if not args.no_onnx:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths = {}
            for i, (name, m) in enumerate(models.items()):
                paths[name] = sc.export_onnx(m, Path(tmp) / f"m{i}.onnx", shape1)
            check = onnx_runners({n: paths[n] for n in list(paths)[-1:]}, 1, args.threads)  # smoke: it runs
            next(iter(check.values()))()
            for batch, reps in ((1, args.reps1), (128, args.reps)):
                speed[f"onnx/batch{batch}"] = interleaved(onnx_runners(paths, batch, args.threads), reps)
                print(f"onnx batch {batch} done", flush=True)
    works: dict[str, dict] = {}
    for name, row in rows.items():
        if "error" in row:
            continue
        need = TARGET * row["flop_ratio"]
        row["speed"] = {key: speed[key][name] for key in speed}
        row["meets_target"] = {key: speed[key][name]["speedup"] >= need for key in speed}
        if row["budget"] is not None:
            for key, ok in row["meets_target"].items():
                works.setdefault(str(row["budget"]), {}).setdefault(key, [])
                if ok:
                    works[str(row["budget"])][key].append(row["rank_multiple"])
    return {
        "model": "resnet18 (CIFAR, width 64, random init)",
        "dense": {
            "params": sc.count_params(dense),
            "flops": flops_dense,
            "speed": {k: v["dense"] for k, v in speed.items()},
        },
        "target": f"speedup >= {TARGET} x FLOP ratio (= {TARGET} / flops_fraction)",
        "reps": {"batch1": args.reps1, "batch128": args.reps},
        "runtimes": {
            "torch": f"PyTorch {torch.__version__} eager, CPU, channels_last, inference_mode",
            "onnx": _ort_version() + " CPUExecutionProvider, ORT_ENABLE_ALL, export_onnx (dynamo)",
        },
        "variants": rows,
        "works": works,
    }


def _ort_version() -> str:
    try:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"
    except ImportError:
        return "onnxruntime (not installed)"


# ---------------------------------------------------------------------------------------------------------
# Accuracy


def rate_for_flops(model: nn.Module, budget: float, shape) -> float | None:
    """The smallest parameter rate whose plan keeps at most ``budget`` of the FLOPs (bisection), or None."""

    def fraction(rate: float) -> float:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return sc.plan_compression(model, rate, input_shape=shape).flops_fraction
        except RateUnreachable:
            return float("inf")

    hi = next((r for r in np.arange(0.98, 0.0, -0.02) if fraction(r) <= budget), None)  # highest rates may be
    if hi is None:  # out of reach (inf), so look down from the top for a rate within the budget
        return None
    lo, hi = 0.0, float(hi)
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fraction(mid) <= budget else (mid, hi)
    return hi


def accuracy(args) -> dict:
    from smoothcompress.study.training import evaluate

    ds = sc.load_dataset(args.data)
    rows, missing = [], []
    for run in args.accuracy:
        path = Path(run) / "model.safetensors"
        if not path.exists():
            missing.append(rel(run))
            continue
        model = sc.load(path).eval()
        shape = (1, *ds.x_test.shape[1:])
        t = time.perf_counter()
        dense_acc = evaluate(model, ds, device="cpu")
        print(f"{rel(run)}: dense {100 * dense_acc:.2f}% ({time.perf_counter() - t:.0f} s)", flush=True)
        rows.append({"run": rel(run), "variant": "dense", "accuracy": dense_acc, "flops_fraction": 1.0, "rate": 0.0})
        for budget in args.budgets:
            variants = [(f"flops={budget}/x{k}", {"flops": budget, "rank_multiple": k}) for k in args.acc_multiples]
            rate = rate_for_flops(model, budget, shape)
            if rate is not None:
                variants.append((f"rate={rate:.4f} (same FLOPs)", {"rate": rate, "input_shape": shape}))
            for name, kwargs in variants:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        small = sc.compress(model, **kwargs)
                except RateUnreachable as e:
                    rows.append({"run": rel(run), "variant": name, "budget": budget, "error": str(e)})
                    continue
                record = small.sc_compression
                acc = evaluate(small, ds, device="cpu")
                rows.append(
                    {
                        "run": rel(run),
                        "variant": name,
                        "budget": budget,
                        "accuracy": acc,
                        "flops_fraction": record.flops_achieved,
                        "rate": record.rate_achieved,
                    }
                )
                print(f"  {name}: {100 * acc:.2f}% (kept FLOPs {record.flops_achieved:.3f}, rate "
                      f"{record.rate_achieved:.3f})", flush=True)  # fmt: skip
    return {
        "dataset": {
            "path": rel(args.data),
            "name": ds.name,
            "sha256": ds.sha256,
            "split": "test",
            "images": int(ds.x_test.shape[0]),
        },
        "rows": rows,
        "missing_runs": missing,
    }


# ---------------------------------------------------------------------------------------------------------


def print_latency(section: dict) -> None:
    keys = list(next(iter(r["speed"] for r in section["variants"].values() if "speed" in r)))
    head = f"{'variant':<14} {'FLOPs kept':>10} {'ratio':>6} {'rate':>6} " + " ".join(f"{k:>15}" for k in keys)
    print(head + "\n" + "-" * len(head))
    for name, r in section["variants"].items():
        if "speed" not in r:
            print(f"{name:<14} unreachable")
            continue
        cells = " ".join(f"{r['speed'][k]['speedup']:>13.2f}{'*' if r['meets_target'][k] else ' ':1} " for k in keys)
        print(f"{name:<14} {r['flops_fraction']:>10.3f} {r['flop_ratio']:>6.2f} {r['rate']:>6.3f} {cells}")
    print(f"* speed-up >= {TARGET} x FLOP ratio; works: {json.dumps(section['works'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions at batch 128")
    ap.add_argument("--reps1", type=int, default=30, help="interleaved repetitions at batch 1")
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    ap.add_argument("--multiples", type=int, nargs="+", default=list(MULTIPLES))
    ap.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency section")
    ap.add_argument("--accuracy", nargs="+", metavar="RUN_DIR", help="trained run folders to evaluate")
    ap.add_argument("--acc-multiples", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["benchmark"] = "flops"
    if not args.no_latency:
        t0, load = time.time(), _load()
        section = latency(args)
        section["provenance"] = _section_provenance(t0, args.threads, load)
        result["latency"] = section
        write_json(out, result)
        print_latency(section)
    if args.accuracy:
        t0, load = time.time(), _load()
        section = accuracy(args)
        section["provenance"] = _section_provenance(t0, args.threads, load)
        old = result.get("accuracy", {})
        done = {row["run"] for row in section["rows"]}
        kept = [row for row in old.get("rows", []) if row["run"] not in done]  # runs measured by an earlier call
        if kept:
            section["rows"] = kept + section["rows"]
            section["missing_runs"] = [r for r in section["missing_runs"] if r not in {row["run"] for row in kept}]
            section["earlier_provenance"] = [*old.get("earlier_provenance", []), old.get("provenance")]
        result["accuracy"] = section
        write_json(out, result)
    print(f"wrote {rel(out)}")


if __name__ == "__main__":
    main()

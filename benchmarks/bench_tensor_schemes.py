"""CP and Tucker-2 factorization against the channel SVD at equal total parameters: accuracy and eager latency.

Takes trained run folders (``smoothcompress train`` or sweep run folders holding ``model.safetensors`` and
``config.toml``, e.g. the cifar10-cpu-frontier-w16 tier's ResNet-18 width 16 models) and, for each rate, compresses
every run with each method (``svd``, ``svd+bn``, ``cp``, ``cp+bn``, ``tucker+bn``; ranks allocated globally to
meet the same parameter rate), then records the top-1 accuracy on the CIFAR-10 test split and the eager latency of
the compressed model at batch 128 as a ratio to the dense model's (:func:`smoothcompress.accounting.measure_latency`:
the two timed in turns in the same run, median). BatchNorm re-estimation (``+bn``) uses 2048 training images.

Run: ``.venv/bin/python benchmarks/bench_tensor_schemes.py RUN [RUN ...] --data ../shared/data/cifar10-jpeg.tar.gz``
Writes ``benchmarks/results/tensor_schemes.json`` after every row, so an interrupted run resumes where it stopped.
``--quick`` runs the whole path on a tiny untrained ResNet-18 and random images (no runs, no data) and writes
``benchmarks/results/tensor_schemes-quick.json``, which is not a result to commit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import data_provenance, rel  # noqa: E402  (benchmarks/, the script's folder)

import smoothcompress as sc
from smoothcompress.accounting import measure_latency
from smoothcompress.files import write_json
from smoothcompress.models import default_input_shape
from smoothcompress.provenance import provenance

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "tensor_schemes.json"
QUICK_RESULTS = REPO / "benchmarks" / "results" / "tensor_schemes-quick.json"
METHODS = ("svd", "svd+bn", "cp", "cp+bn", "tucker+bn")  # compared at equal total parameters
RATES = (0.5, 0.7, 0.8, 0.9)
IMAGES = 2048  # BatchNorm re-estimation images, from the training split
LATENCY_BATCH = 128
LATENCY_REPS = 10


def _latency(dense: torch.nn.Module, small: torch.nn.Module, shape: tuple[int, ...], reps: int) -> dict:
    """Eager forward seconds of both models on ``shape``, timed in turns, and their ratio (compressed / dense)."""
    before, after = measure_latency([dense, small], shape, reps=reps)
    return {"dense_seconds": before, "seconds": after, "ratio": after / before, "batch": shape[0]}


def _quick_setup() -> tuple[list, object, object, object, dict]:
    """A tiny untrained ResNet-18 and random images standing for a run and CIFAR-10 (the script's path, not data)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = sc.create_model("resnet18", num_classes=10, width=4).eval()
    test = [(torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)) for _ in range(2)]
    calibration = torch.randn(128, 3, 32, 32, generator=gen)
    meta = provenance("cpu", script=rel(__file__), quick=True)
    runs = [("quick-resnet18-w4", model, {"reg": None, "weight": None, "seed": 0})]
    return runs, test, calibration, None, meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="trained run folders (model.safetensors, config.toml)")
    p.add_argument("--data", help="the CIFAR-10 copy the runs were trained on (a .tar.gz or a folder)")
    p.add_argument("--out", type=Path, help=f"results file (default {rel(RESULTS)})")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="methods compared (default: all)")
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES), help="rates (default: 0.5 0.7 0.8 0.9)")
    p.add_argument("--reps", type=int, default=LATENCY_REPS, help="timed forward passes per model")
    p.add_argument("--quick", action="store_true", help="tiny untrained model and random images: checks the script")
    args = p.parse_args()
    from smoothcompress.study.training import evaluate

    images, batch = IMAGES, LATENCY_BATCH
    if args.quick:
        runs, test, calibration, _, meta = _quick_setup()
        images, batch, args.rates, args.reps = 128, 8, args.rates[:2], 2
        out = args.out or QUICK_RESULTS
    else:
        if not args.runs or not args.data:
            p.error("give run folders and --data (or --quick)")
        from smoothcompress.study.data import load_dataset
        from smoothcompress.study.training import TrainConfig

        ds = load_dataset(args.data)  # the ImageFolder copy: test split for accuracy, training split for +bn
        test = calibration = ds
        meta = data_provenance(ds, args.data, script=rel(__file__), images=IMAGES, split="test")
        runs = []
        for run in args.runs:
            config = TrainConfig.from_toml(run / "config.toml")
            info = {"reg": config.reg, "weight": config.weight, "seed": config.seed}
            runs.append((run.name, sc.load(run / "model.safetensors").eval(), info))
        out = args.out or RESULTS
    meta |= {"latency_batch": batch, "latency_reps": args.reps, "threads": torch.get_num_threads()}
    old = json.loads(out.read_text()) if out.exists() and not args.quick else {}
    rows = old.get("rows", [])
    done = {(r["run"], r["method"], r["rate"]) for r in rows}

    def save() -> None:
        write_json(out, {**meta, "rows": rows})

    for name, model, info in runs:
        dense = evaluate(model, test)
        shape = (batch, *default_input_shape(model)[1:])
        for rate in args.rates:
            for method_name in args.methods:
                if (name, method_name, rate) in done:
                    continue
                method = sc.get_method(method_name)
                start = time.perf_counter()
                small = method.apply(model, rate, data=calibration if method.uses_data() else None, images=images)
                seconds = time.perf_counter() - start
                acc = evaluate(small, test)
                latency = _latency(model, small, shape, args.reps)
                rows.append(
                    {
                        "run": name, **info, "method": method_name, "label": small.sc_compression.label,
                        "rate": rate, "rate_achieved": small.sc_compression.rate_achieved,
                        "params": sc.count_params(small), "dense_params": sc.count_params(model), "accuracy": acc,
                        "dense_accuracy": dense, "latency_ratio": latency["ratio"], "latency": latency,
                        "seconds": seconds,
                    }
                )  # fmt: skip
                done.add((name, method_name, rate))
                save()
                print(
                    f"{name:<44} {method_name:<10} {rate:.2f}  params {sc.count_params(small):>9,}  "
                    f"acc {100 * acc:6.2f} (dense {100 * dense:.2f})  latency x{latency['ratio']:.2f}  "
                    f"({seconds:.0f} s)",
                    flush=True,
                )
    print(f"wrote {rel(out)}")


if __name__ == "__main__":
    main()

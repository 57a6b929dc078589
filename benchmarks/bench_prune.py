"""Pruning baselines: do the methods behave sensibly, and what do they cost?

1. Accuracy sanity check. The registry ``cnn`` is trained for a fixed budget on scikit-learn's 8x8 digits with a
   minimal loop, then pruned by each method at several rates without fine-tuning (SVD ``compress`` alongside for
   reference). Expected: accuracy falls with the rate; global magnitude holds up longest; filter pruning, which
   removes whole channels, falls first.
2. Cost on the full-width CIFAR ResNet-18 (11.2M params): wall time of ``prune`` per method at rate 0.7, and the
   batch-128 CPU inference time of the filter-pruned model as a ratio to the dense one, measured in the same run
   with interleaved repetitions (medians).

Run: ``.venv/bin/python benchmarks/bench_prune.py [--quick]``. Writes ``benchmarks/results/prune.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance

RESULTS = Path(__file__).parent / "results" / "prune.json"


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 8, 8) floats in [0, 1], split 80/20 with a fixed permutation."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    return x[perm[:n_train]], y[perm[:n_train]], x[perm[n_train:]], y[perm[n_train:]]


def train_cnn(x: torch.Tensor, y: torch.Tensor, seconds: float, seed: int) -> tuple[nn.Module, int]:
    """A minimal SGD loop on the registry ``cnn`` for a wall-clock budget; returns the model and epochs run."""
    torch.manual_seed(seed)
    model = sc.create_model("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    start, epochs = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        epochs += 1
    return model.eval(), epochs


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.eval()(x).argmax(1) == y).float().mean())


def accuracy_table(seconds: float, rates: list[float], seed: int) -> dict:
    xtr, ytr, xte, yte = digits(seed)
    model, epochs = train_cnn(xtr, ytr, seconds, seed)
    rows = [{"method": "dense", "rate": 0.0, "achieved": 0.0, "accuracy": accuracy(model, xte, yte)}]
    for method in (*sc.PRUNE_METHODS, "svd"):
        for rate in rates:
            if method == "svd":
                small = sc.compress(model, rate)
                achieved = 1 - sc.count_params(small) / sc.count_params(model)
            else:
                small = sc.prune(model, rate, method=method)
                achieved = sc.prune_report(model, small, method).rate
            rows.append({"method": method, "rate": rate, "achieved": achieved, "accuracy": accuracy(small, xte, yte)})
    return {"model": "cnn (width 32)", "params": sc.count_params(model), "epochs": epochs, "rows": rows}


def cost_table(rate: float, reps: int) -> dict:
    torch.manual_seed(0)
    model = sc.create_model("resnet18").eval()
    times = {}
    pruned = {}
    for method in sc.PRUNE_METHODS:
        t = time.perf_counter()
        pruned[method] = sc.prune(model, rate, method=method)
        times[method] = time.perf_counter() - t
    x = torch.randn(128, 3, 32, 32)
    dense, small = [], []
    with torch.no_grad():
        for m in (model, pruned["filter"]):  # warm-up
            m(x)
        for _ in range(reps):  # interleaved: dense, pruned, dense, pruned, ...
            for m, out in ((model, dense), (pruned["filter"], small)):
                t = time.perf_counter()
                m(x)
                out.append(time.perf_counter() - t)
    return {
        "model": "resnet18 (width 64)",
        "rate": rate,
        "prune_seconds": times,
        "achieved": {k: sc.prune_report(model, v, k).rate for k, v in pruned.items()},
        "batch128_seconds": {"dense": statistics.median(dense), "filter": statistics.median(small)},
        "filter_speedup": statistics.median(dense) / statistics.median(small),
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s of training and 3 timing repetitions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rates = [0.3, 0.5, 0.7, 0.9]
    acc = accuracy_table(5.0 if args.quick else 20.0, rates, args.seed)
    cost = cost_table(0.7, 3 if args.quick else 7)

    print(f"digits test accuracy, {acc['model']}, {acc['params']:,} params, {acc['epochs']} epochs, no fine-tuning")
    dense = acc["rows"][0]["accuracy"]
    print(f"{'method':<22}" + "".join(f"{r:>8.1f}" for r in rates) + f"   (dense {dense:.3f})")
    for method in (*sc.PRUNE_METHODS, "svd"):
        cells = [r for r in acc["rows"] if r["method"] == method]
        print(f"{method:<22}" + "".join(f"{r['accuracy']:>8.3f}" for r in cells))
    print(f"\n{cost['model']} at rate {cost['rate']}: prune wall time")
    for method, sec in cost["prune_seconds"].items():
        print(f"  {method:<22}{sec:7.2f} s   (achieved rate {cost['achieved'][method]:.4f})")
    b = cost["batch128_seconds"]
    print(
        f"batch-128 forward: dense {b['dense']:.3f} s, filter-pruned {b['filter']:.3f} s "
        f"-> {cost['filter_speedup']:.2f}x (median of {cost['reps']}, interleaved)"
    )
    write_json(
        RESULTS,
        {
            "provenance": provenance(
                "cpu",
                seed=args.seed,
                threads=args.threads,
                load_average=os.getloadavg(),
                dataset="sklearn digits",
                wall_seconds=time.perf_counter() - start,
            ),
            "accuracy": acc,
            "cost": cost,
        },
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()

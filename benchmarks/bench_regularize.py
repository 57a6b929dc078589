"""Cost of the smoothness penalties in a training step, and a check of their normalisation across widths.

Run: ``.venv/bin/python benchmarks/bench_regularize.py [--reps 5] [--batch 128] [--device auto]``.
Writes ``benchmarks/results/regularize.json``.

1. Normalisation check. A randomly initialised CIFAR ResNet-18 at width 16 and at width 64, one batch of random
   images and labels: for each kind, the summed penalty and, per layer, ``||grad penalty|| / ||W||`` and
   ``||grad penalty|| / ||grad loss||``, for the chosen normalisation (``Smoothness``) and two alternatives
   (the raw sum :func:`smoothcompress.penalty`, and the raw sum divided by its number of terms or entries).
2. Training-step time of the full-width CIFAR ResNet-18 (SGD, cross-entropy, batch 128) with each penalty, as a
   ratio to the unregularised step. Variants are interleaved within each repetition; medians are reported.
   On CPU ``torch.set_num_threads(2)``; on CUDA bf16 autocast and channels_last, as the trainer uses them.
   The cost of the penalty alone (forward + backward, or the proximal step) is timed too, and the amortised
   ratio of ``every=k`` is derived from it: ``1 + (active - 1) / k``.

Targets (issue 3): ratio <= 1.05 for first and second, <= 1.15 for nuclear (with a cheaper schedule if needed).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import smoothcompress as sc
from smoothcompress.provenance import provenance, write_json
from smoothcompress.regularize import KINDS, Smoothness, normalized_penalty, penalty, roughness

RESULTS = Path(__file__).resolve().parent / "results" / "regularize.json"
TARGETS = {"first": 1.05, "second": 1.05, "nuclear": 1.15}


# ---------------------------------------------------------------------------------------------------------
# 1. Normalisation across widths


SCHEMES = ("chosen", "rho", "mean", "raw")
"""chosen: Smoothness's layer terms; rho: the scale-free roughness alone; mean: the raw sum divided by its number
of difference terms (nuclear: of entries); raw: the raw sum :func:`penalty`."""


def _layer_value(weight: torch.Tensor, kind: str, scheme: str, p: float) -> torch.Tensor:
    """One layer's penalty under a normalisation scheme from :data:`SCHEMES`."""
    if scheme == "chosen":
        return normalized_penalty(weight, kind, p=p)
    if scheme == "rho":
        return roughness(weight, kind, p=p)
    raw = penalty(weight, kind, p=p)
    if scheme == "raw":
        return raw
    w = weight if weight.ndim == 4 else weight[:, :, None, None]
    order = {"first": 1, "second": 2}.get(kind)
    if order is None:
        return raw / w.numel()
    return raw / max(sum(w.numel() // w.shape[d] * max(w.shape[d] - order, 0) for d in (0, 1)), 1)


def normalisation_check(widths=(16, 64), batch: int = 32, seed: int = 0) -> dict:
    """Penalty values and gradient ratios of a fresh ResNet-18 at each width, per normalisation scheme.

    For each kind (and ``first`` with p=1) and scheme: the summed value, and medians over layers of
    ``||grad P|| / ||W||`` and ``||grad P|| / ||grad L||`` (L: cross-entropy on random images and labels).
    """
    out: dict = {}
    for width in widths:
        torch.manual_seed(seed)
        model = sc.create_model("resnet18", width=width)
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        layers = Smoothness("first", 1.0).layers(model)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        loss_grad = {n: m.weight.grad.norm().item() for n, m in layers.items()}
        w_norm = {n: m.weight.detach().norm().item() for n, m in layers.items()}
        res = {
            "params": sc.count_params(model),
            "layers": len(layers),
            "loss_grad_over_weight": statistics.median(loss_grad[n] / w_norm[n] for n in layers),
            "loss_grad_over_weight_by_layer": {n: loss_grad[n] / w_norm[n] for n in layers},
        }
        for kind, p in [(k, 2.0) for k in KINDS] + [("first", 1.0)]:
            for scheme in SCHEMES:
                model.zero_grad()
                value = sum(_layer_value(m.weight, kind, scheme, p) for m in layers.values())
                value.backward()
                ratio = {n: m.weight.grad.norm().item() / loss_grad[n] for n, m in layers.items()}
                res[f"{kind}{'' if p == 2 else '-p1'}/{scheme}"] = {
                    "value": value.item(),
                    "median_grad_over_weight": statistics.median(
                        m.weight.grad.norm().item() / w_norm[n] for n, m in layers.items()
                    ),
                    "median_grad_over_loss_grad": statistics.median(ratio.values()),
                    "grad_over_loss_grad_by_layer": ratio,
                }
        out[f"width{width}"] = res
    a, b = (out[f"width{w}"] for w in widths)
    out["drift"] = {  # median over layers of (ratio at the larger width / ratio at the smaller width)
        key: statistics.median(
            b[key]["grad_over_loss_grad_by_layer"][n] / a[key]["grad_over_loss_grad_by_layer"][n]
            for n in a[key]["grad_over_loss_grad_by_layer"]
        )
        for key in a
        if "/" in key
    }
    return out


def print_normalisation(check: dict) -> None:
    keys = [k for k in check if k.startswith("width")]
    print("\nNormalisation check (fresh ResNet-18, medians over layers):")
    print("  value | ||grad P||/||W|| | ||grad P||/||grad L||, per width; drift = per-layer ratio of the last")
    head = "".join(f"{k:>36s}" for k in keys)
    print(f"{'kind/scheme':18s}{head}{'drift':>8s}")
    for entry in check["drift"]:
        cells = "".join(
            f"{check[k][entry]['value']:12.4g}{check[k][entry]['median_grad_over_weight']:12.3g}"
            f"{check[k][entry]['median_grad_over_loss_grad']:12.3g}"
            for k in keys
        )
        print(f"{entry:18s}{cells}{check['drift'][entry]:8.2f}")
    ref = "".join(f"{'':12s}{check[k]['loss_grad_over_weight']:12.3g}{'':12s}" for k in keys)
    print(f"{'loss (reference)':18s}{ref}")


# ---------------------------------------------------------------------------------------------------------
# 2. Step time


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, opt, reg: Smoothness | None, x, y, device: torch.device, lr: float):
    """One training step: forward (bf16 autocast on CUDA), loss + penalty, backward, SGD step, after_step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
            if reg is not None:
                loss = loss + reg(model)
        loss.backward()
        opt.step()
        if reg is not None:
            reg.after_step(model, lr)

    return step


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _penalty_alone(reg: Smoothness, model, lr: float) -> None:
    """The penalty's own work in a step: forward + backward, or the proximal step."""
    if reg.proximal:
        reg.after_step(model, lr)
    else:
        reg(model).backward()


def step_benchmark(device: torch.device, batch: int, reps: int, seed: int, every: int) -> dict:
    torch.manual_seed(seed)
    model = sc.create_model("resnet18").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    # A small weight keeps the weights sane over the repeated steps; the cost does not depend on it.
    variants: dict[str, Smoothness | None] = {
        "none": None,
        "first": Smoothness("first", 1e-4),
        "second": Smoothness("second", 1e-4),
        "nuclear": Smoothness("nuclear", 1e-4),
        "nuclear-prox": Smoothness("nuclear", 1e-4, proximal=True),
    }
    steps = {name: make_step(model, opt, reg, x, y, device, lr) for name, reg in variants.items()}
    for fn in steps.values():  # warm-up: allocator, oneDNN/cuDNN plans
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    pen_times: dict[str, list[float]] = {name: [] for name in variants if name != "none"}
    for rep in range(reps):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(_timed(steps[name], device))
        for name, reg in variants.items():  # the penalty alone: forward + backward, or the proximal step
            if reg is None:
                continue
            pen_times[name].append(_timed(functools.partial(_penalty_alone, reg, model, lr), device))
        print(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in steps), flush=True)
    base = statistics.median(times["none"])
    rows = {}
    for name in steps:
        med = statistics.median(times[name])
        row = {"median_s": med, "times_s": times[name], "ratio": med / base}
        if name in pen_times:
            pen = statistics.median(pen_times[name])
            row |= {"penalty_alone_median_s": pen, "ratio_from_penalty_alone": 1 + pen / base}
        rows[name] = row
    # every=k: one active step and k-1 free ones (the free step costs a zero tensor).
    pen = rows["nuclear"]["penalty_alone_median_s"]
    rows[f"nuclear-every{every}"] = {
        "derived": f"1 + (median penalty-alone time / {every}) / median baseline step",
        "ratio": 1 + pen / every / base,
    }
    prox = rows["nuclear-prox"]["penalty_alone_median_s"]
    rows[f"nuclear-prox-every{every}"] = {
        "derived": f"1 + (median proximal-step time / {every}) / median baseline step",
        "ratio": 1 + prox / every / base,
    }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each variant")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--every", type=int, default=10, help="k of the derived every-k schedule")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    check = normalisation_check(seed=args.seed)
    print_normalisation(check)

    print(f"\nTraining step, CIFAR ResNet-18 (width 64), batch {args.batch}, {device}:")
    rows = step_benchmark(device, args.batch, args.reps, args.seed, args.every)
    print(f"\n{'variant':22s}{'median s':>10s}{'ratio':>8s}{'ratio (alone)':>15s}{'target':>8s}  met")
    for name, row in rows.items():
        kind = name.split("-")[0]
        target = TARGETS.get(kind)
        alone = row.get("ratio_from_penalty_alone")
        med = row.get("median_s")
        print(
            f"{name:22s}{(f'{med:.3f}' if med else 'derived'):>10s}{row['ratio']:8.3f}"
            f"{(f'{alone:.3f}' if alone else ''):>15s}{(f'{target:.2f}' if target else ''):>8s}"
            f"  {'' if target is None else ('yes' if row['ratio'] <= target else 'no')}"
        )
        if target is not None:
            row["target"], row["met"] = target, row["ratio"] <= target
    wall = time.perf_counter() - t0
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    write_json(
        args.out,
        {
            "benchmark": "regularize",
            "model": "resnet18 (CIFAR, width 64)",
            "batch": args.batch,
            "reps": args.reps,
            "normalisation_check": check,
            "step": rows,
            "loadavg_at_end": load,
            "provenance": provenance(device, seed=args.seed, wall_time_s=round(wall, 1)),
        },
    )
    print(f"\nwrote {args.out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()

"""Cost of the smoothness penalties in a training step, and a check of their normalisation across widths.

Run: ``.venv/bin/python benchmarks/bench_regularize.py [--reps 3] [--batch 128] [--device auto] [--threads 2]
[--clock wall|cpu]``. Writes ``benchmarks/results/regularize.json`` (CPU, 2 threads, wall clock; other settings
get a suffixed name, e.g. ``regularize-1threads-cpuclock.json`` or ``regularize-cuda.json``).

1. Normalisation check. A randomly initialised CIFAR ResNet-18 at width 16 and at width 64, one batch of random
   images and labels: for each kind, the summed penalty and, per layer, ``||grad penalty|| / ||W||`` and
   ``||grad penalty|| / ||grad loss||``, for the chosen layer terms (``Smoothness``) and three alternatives
   (the scale-free roughness alone, the raw sum divided by its number of terms, the raw sum).
2. Training-step time of the full-width CIFAR ResNet-18 (SGD, cross-entropy, batch 128) with each penalty, as a
   ratio to the unregularised step. Variants are interleaved within each repetition; medians are reported.
   On CPU ``torch.set_num_threads(2)`` by default; on CUDA bf16 autocast and channels_last, as the trainer uses
   them. The penalty alone (forward + backward, or the proximal step) is timed too: the proximal schedule's ratio
   is ``1 + prox / step`` (the prox runs after ``optimizer.step()``, separable from it), and ``every=k`` is
   derived as ``1 + (penalty alone / k) / step``, and measured (nuclear) over blocks of k real steps against
   blocks of k plain steps. ``--clock cpu`` times process CPU seconds instead of wall time: with ``--threads 1``
   it is insensitive to other processes on a shared machine.

Nuclear schedules (``Smoothness`` options): ``nuclear-refresh10`` (the lagged gradient: ``U V^T`` every 10th step, a
fixed linear term between; measured over blocks of 10 steps), ``nuclear-newton-schulz`` (``U V^T`` by Newton-Schulz
on every step, a full step), ``nuclear-lowrank`` (the penalised weights' randomized partial SVDs,
``torch.svd_lowrank`` at q = min(m, n) / 4: its cost only, ``1 + alone / step``; not a training option).
Their accuracies are measured by ``bench_nuclear_schedule.py``.

Targets: ratio <= 1.05 for first and second, <= 1.10 for the default nuclear schedule.
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
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance
from smoothcompress.regularize import KINDS, Smoothness, normalized_penalty, penalty, roughness

RESULTS = Path(__file__).resolve().parent / "results" / "regularize.json"
TARGETS = {"first": 1.05, "second": 1.05, "nuclear": 1.10}  # nuclear: the default schedule must reach 1.10
AFTER = "first(after fwd)"  # the "first" step with the penalty built after the forward pass, as a check


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
    a, b = out[f"width{widths[0]}"], out[f"width{widths[-1]}"]
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


def make_step(model, opt, reg: Smoothness | None, x, y, device: torch.device, lr: float, after: bool = False):
    """One training step as the trainer runs it: the penalty, then the forward pass (bf16 autocast on CUDA),
    loss + penalty, backward, SGD step, after_step. Built before the forward, the penalty's backward runs after
    the network's; ``after=True`` builds it after the forward instead (the variant "first(after fwd)")."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        pen = reg(model) if reg is not None and not after else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        if reg is not None and after:
            pen = reg(model)
        if pen is not None:
            loss = loss + pen
        loss.backward()
        opt.step()
        if reg is not None:
            reg.after_step(model, lr)

    return step


def _timed(fn, device: torch.device, clock) -> float:
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def _penalty_alone(reg: Smoothness, model, lr: float) -> None:
    """The penalty's own work in a step: forward + backward, or the proximal step."""
    if reg.proximal:
        reg.after_step(model, lr)
    else:
        reg(model).backward()


LOWRANK_FRACTION = 4  # the randomized SVD keeps q = min(m, n) / 4 directions: a typical compressed rank


def _lowrank_alone(reg: Smoothness, model) -> None:
    """A randomized partial SVD (``torch.svd_lowrank``, q = min(m, n) / 4, 2 power iterations) of every penalised
    weight: the cost of the candidate "nuclear-lowrank", which is timed but not trained (``docs/design.md``)."""
    for module in reg.layers(model).values():
        mat = module.weight.detach().flatten(1)
        torch.svd_lowrank(mat, q=max(1, min(mat.shape) // LOWRANK_FRACTION), niter=2)


def step_benchmark(device: torch.device, batch: int, reps: int, seed: int, every: int, clock) -> dict:
    """Median step times with each penalty (interleaved), the penalty alone, and the ratios to no penalty."""
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
    regs: dict[str, Smoothness] = {
        "first": Smoothness("first", 1e-4),
        "second": Smoothness("second", 1e-4),
        "nuclear": Smoothness("nuclear", 1e-4),
        "nuclear-prox": Smoothness("nuclear", 1e-4, proximal=True),
        "nuclear-newton-schulz": Smoothness("nuclear", 1e-4, polar="newton-schulz"),
        # the lagged term between refreshes: its polar factors are computed once (warm-up) and never again
        "nuclear-lagged": Smoothness("nuclear", 1e-4, refresh=10**9),
    }
    # Full steps for the loss-term penalties; the proximal step runs after optimizer.step() and is separable,
    # so it is timed on its own (below) to keep the benchmark short.
    full = ("none", "first", "second", "nuclear", "nuclear-newton-schulz")
    steps = {name: make_step(model, opt, regs.get(name), x, y, device, lr) for name in full}
    # Why the trainer builds the penalty before the forward pass: the same "first" step with it built after.
    steps[AFTER] = make_step(model, opt, regs["first"], x, y, device, lr, after=True)
    for fn in steps.values():  # warm-up: allocator, oneDNN/cuDNN plans
        fn()
    regs["nuclear-lagged"](model)  # computes the polar factors the lagged term then reuses
    _penalty_alone(regs["nuclear-prox"], model, lr)
    times: dict[str, list[float]] = {name: [] for name in steps}
    alone: dict[str, list[float]] = {name: [] for name in [*regs, "nuclear-lowrank"]}
    for rep in range(reps):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(_timed(steps[name], device, clock))
        for name, reg in regs.items():
            alone[name].append(_timed(functools.partial(_penalty_alone, reg, model, lr), device, clock))
        lowrank = functools.partial(_lowrank_alone, regs["nuclear"], model)
        alone["nuclear-lowrank"].append(_timed(lowrank, device, clock))
        print(
            f"  rep {rep + 1}/{reps}: "
            + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in steps)
            + " | alone: "
            + ", ".join(f"{n} {alone[n][-1]:.3f}s" for n in alone),
            flush=True,
        )
    base = statistics.median(times["none"])
    rows: dict[str, dict] = {"none": {"median_s": base, "times_s": times["none"], "ratio": 1.0}}
    for name in alone:
        pen = statistics.median(alone[name])
        row = {
            "penalty_alone_median_s": pen,
            "penalty_alone_s": alone[name],
            "ratio_from_penalty_alone": 1 + pen / base,
        }
        if name in times:
            med = statistics.median(times[name])
            row |= {"median_s": med, "times_s": times[name], "ratio": med / base}
        else:
            row |= {"ratio": 1 + pen / base, "derived": "1 + median time of its own work / median baseline step"}
        rows[name] = row
    rows[AFTER] = {"median_s": statistics.median(times[AFTER]), "times_s": times[AFTER]}
    rows[AFTER]["ratio"] = rows[AFTER]["median_s"] / base
    # every=k: one active step and k-1 free ones (a free step costs a zero tensor).
    for name in ("nuclear", "nuclear-prox"):
        rows[f"{name}-every{every}"] = {
            "derived": f"1 + (median penalty-alone time / {every}) / median baseline step",
            "ratio": 1 + rows[name]["penalty_alone_median_s"] / every / base,
        }
    # refresh=k: the lagged term on every step, plus one SVD (the exact penalty's cost) every k-th step.
    rows[f"nuclear-refresh{every}"] = {
        "derived": f"1 + (median lagged-term time + median exact-penalty time / {every}) / median baseline step",
        "ratio": 1
        + (rows["nuclear-lagged"]["penalty_alone_median_s"] + rows["nuclear"]["penalty_alone_median_s"] / every) / base,
    }
    # ... and measured: blocks of k real steps with Smoothness(every=k) or Smoothness(refresh=k), against blocks
    # of k plain steps.
    blocks = {
        "none": steps["none"],
        f"nuclear-every{every}": make_step(model, opt, Smoothness("nuclear", 1e-4, every=every), x, y, device, lr),
        f"nuclear-refresh{every}": make_step(model, opt, Smoothness("nuclear", 1e-4, refresh=every), x, y, device, lr),
    }
    block_times: dict[str, list[float]] = {name: [] for name in blocks}
    for rep in range(max(2, reps // 3)):
        for name in list(blocks) if rep % 2 == 0 else list(reversed(blocks)):
            fn = blocks[name]
            block_times[name].append(_timed(lambda fn=fn: [fn() for _ in range(every)], device, clock) / every)
        print(f"  block {rep + 1}: " + ", ".join(f"{n} {t[-1]:.3f}s/step" for n, t in block_times.items()), flush=True)
    med = {name: statistics.median(t) for name, t in block_times.items()}
    for name in list(blocks)[1:]:
        rows[f"{name}-measured"] = {
            "measured": f"median over blocks of {every} steps, interleaved with blocks of {every} plain steps",
            "median_s": med[name],
            "times_s": block_times[name],
            "none_times_s": block_times["none"],
            "ratio": med[name] / med["none"],
        }
    return rows


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (Linux), to judge how shared the machine was."""
    path = Path("/proc/loadavg")
    return [float(v) for v in path.read_text().split()[:3]] if path.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each variant")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--every", type=int, default=10, help="k of the derived every-k schedule")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time, insensitive to other processes on a shared machine "
        "(meaningful with --threads 1, where no thread spin-waits)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="widths of the normalisation check")
    ap.add_argument(
        "--check-only",
        action="store_true",
        help="only the normalisation check (seconds), into results/regularize-check-w<widths>.json",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path; default results/regularize.json for CPU, 2 threads, wall clock, else a suffixed name",
    )
    args = ap.parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    elif args.clock == "cpu":
        ap.error("--clock cpu does not see GPU time; use the wall clock on CUDA")
    out = args.out
    if out is None:
        suffix = "-cuda" if device.type == "cuda" else f"-{args.threads}threads-{args.clock}clock"
        out = RESULTS if suffix == "-2threads-wallclock" else RESULTS.with_name(f"regularize{suffix}.json")
    t0 = time.perf_counter()
    load_start = _loadavg()

    check = normalisation_check(widths=tuple(args.widths), seed=args.seed)
    print_normalisation(check)
    if args.check_only:
        out = args.out or RESULTS.with_name(f"regularize-check-w{'-'.join(map(str, args.widths))}.json")
        write_json(
            out,
            {
                "benchmark": "regularize (normalisation check)",
                "normalisation_check": check,
                "provenance": provenance("cpu", seed=args.seed, wall_time_s=round(time.perf_counter() - t0, 1)),
            },
        )
        print(f"\nwrote {out}")
        return

    print(f"\nTraining step, CIFAR ResNet-18 (width 64), batch {args.batch}, {device}, {args.clock} clock:")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = step_benchmark(device, args.batch, args.reps, args.seed, args.every, clock)
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
    write_json(
        out,
        {
            "benchmark": "regularize",
            "model": "resnet18 (CIFAR, width 64)",
            "batch": args.batch,
            "reps": args.reps,
            "clock": args.clock,
            "normalisation_check": check,
            "step": rows,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "loadavg_1_5_15min": {"start": load_start, "end": _loadavg()},
            "provenance": provenance(device, seed=args.seed, wall_time_s=round(wall, 1)),
        },
    )
    print(f"\nwrote {out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()

"""SVD compression of the CIFAR ResNet-18: compression time, params, FLOPs and CPU inference speed vs dense.

For each variant (rate, allocation, scheme) it compresses the full-width CIFAR ResNet-18 and reports the compression
wall time (median of repeats, plus the first call, which pays one-off library warm-up), the parameter and FLOP
counts, and the inference throughput as a ratio to the dense model measured in the same run: at batch 1 and 128,
repetitions interleaved (dense, v1, v2, ..., dense, v1, ...), the ratio taken per repetition and its median
reported. ``torch.set_num_threads`` is set here (default 2).

The weights are random (no trained full-width ResNet-18 exists on this machine). Inference speed depends only on
the layer shapes, but the ranks that "global" allocation picks depend on the spectra, and random weights have flat
spectra, so "global" is shown next to "uniform", whose ranks do not depend on the weights.

Variants ending in ``/x16`` use ``rank_multiple=16`` (every rank a multiple of 16, which oneDNN's AVX-512 kernels
prefer). ``--investigate`` adds a per-layer timing of dense vs factorized convolutions; copies of some models run
in channels_last and through ``torch.jit.optimize_for_inference`` (frozen TorchScript that keeps oneDNN's blocked
layout between layers and folds BatchNorm), each also compared with the dense model run the same way; and a run
with oneDNN disabled (``torch.backends.mkldnn``), to explain where the speed-up goes.

Run: ``.venv/bin/python benchmarks/bench_compress.py [--quick] [--investigate]``; writes
``benchmarks/results/compress.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance

ROOT = Path(__file__).resolve().parent
SHAPE = (3, 32, 32)
# (rate, allocation, scheme, rank_multiple)
VARIANTS = [
    (0.5, "global", "channel", 1),
    (0.7, "global", "channel", 1),
    (0.9, "global", "channel", 1),
    (0.7, "global", "channel", 16),
    (0.7, "uniform", "channel", 1),
    (0.7, "uniform", "channel", 16),
    (0.7, "global", "spatial", 1),
]
# models also timed in channels_last and through torch.jit.optimize_for_inference (oneDNN layout kept between
# layers, BatchNorm folded) with --investigate
OPTIMISED = ["dense", "global/channel/0.7", "uniform/channel/0.7/x16"]


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def compress_timing(model: nn.Module, repeats: int, *args, **kwargs) -> dict:
    """Wall and CPU seconds of ``compress``, with the configured threads and with one thread.

    On a shared machine, OpenMP threads spin-wait for each other, which inflates the multi-threaded wall time of the
    small eigen-decompositions; the single-thread wall time and the CPU time are the stable figures.
    """
    out: dict = {}
    threads = torch.get_num_threads()
    for label, n in ((f"{threads}threads", threads), ("1thread", 1)):
        torch.set_num_threads(n)
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            small = sc.compress(model, *args, **kwargs)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[label] = {"first_s": wall[0], "median_s": statistics.median(wall), "cpu_median_s": statistics.median(cpu)}
    torch.set_num_threads(threads)
    out["model"] = small
    return out


@torch.inference_mode()
def interleaved_ratios(models: dict[str, nn.Module], batch: int, reps: int, inner: int) -> dict[str, dict]:
    """Per-repetition time of each model; the ratio to "dense" is taken within each repetition."""
    x = torch.randn(batch, *SHAPE)
    inputs = {
        name: x.contiguous(memory_format=torch.channels_last) if "channels_last" in name else x for name in models
    }
    for name, m in models.items():  # warm-up: oneDNN primitive creation, allocator
        m(inputs[name])
        m(inputs[name])
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(reps):
        for name, m in models.items():
            t = time.perf_counter()
            for _ in range(inner):
                m(inputs[name])
            samples[name].append((time.perf_counter() - t) / inner)
    out = {}
    for name, ts in samples.items():
        ratios = [d / t for d, t in zip(samples["dense"], ts, strict=True)]
        out[name] = {
            "median_s": statistics.median(ts),
            "speedup_median": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "images_per_s": batch / statistics.median(ts),
        }
    return out


@torch.inference_mode()
def layer_timings(dense: nn.Module, small: nn.Module, batch: int, reps: int) -> list[dict]:
    """Dense vs factorized time of each factorized conv, on its real input shape, interleaved."""
    shapes: dict[str, tuple] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            shapes[name] = tuple(inputs[0].shape)

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    dense(torch.randn(1, *SHAPE))
    for h in hooks:
        h.remove()
    big = dict(dense.named_modules())
    rows = []
    for name, f in small.named_modules():
        if not isinstance(f, sc.FactorizedConv2d):
            continue
        x = torch.randn(batch, *shapes[name][1:])
        d = big[name]
        d(x), f(x)
        td, tf = [], []
        for _ in range(reps):
            t = time.perf_counter()
            d(x)
            td.append(time.perf_counter() - t)
            t = time.perf_counter()
            f(x)
            tf.append(time.perf_counter() - t)
        fl_d, fl_f = sc.count_flops(d, (1, *shapes[name][1:])), sc.count_flops(f, (1, *shapes[name][1:]))
        rows.append(
            {
                "layer": name,
                "weight": list(d.weight.shape),
                "input_hw": list(shapes[name][2:]),
                "rank": f.rank,
                "flops_ratio": fl_d / fl_f,
                "speedup": statistics.median(td) / statistics.median(tf),
                "dense_ms": 1e3 * statistics.median(td),
                "factorized_ms": 1e3 * statistics.median(tf),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions at batch 128")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, main variants only")
    ap.add_argument("--investigate", action="store_true", help="per-layer timings, channels_last, oneDNN off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "compress.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    load_before = load_average()
    variants = VARIANTS[:3] if args.quick else VARIANTS
    if args.quick and args.investigate:
        ap.error("--investigate needs the full variant list; drop --quick")
    reps = 3 if args.quick else args.reps

    dense = sc.create_model("resnet18").eval()
    flops_dense = sc.count_flops(dense, (1, *SHAPE))
    params_dense = sc.count_params(dense)
    models: dict[str, nn.Module] = {"dense": dense}
    rows = []
    for rate, allocation, scheme, multiple in variants:
        name = f"{allocation}/{scheme}/{rate}" + (f"/x{multiple}" if multiple > 1 else "")
        timing = compress_timing(dense, 3, rate, allocation, scheme, rank_multiple=multiple)
        small = timing.pop("model").eval()
        models[name] = small
        rows.append(
            {
                "variant": name,
                "rate": rate,
                "allocation": allocation,
                "scheme": scheme,
                "rank_multiple": multiple,
                "achieved_rate": small.sc_compression.rate_achieved,
                "params": sc.count_params(small),
                "flops": sc.count_flops(small, (1, *SHAPE)),
                "flops_ratio": flops_dense / sc.count_flops(small, (1, *SHAPE)),
                "compress_s": timing,
                "ranks": {k: v[1] for k, v in small.sc_compression.details["ranks"].items()},
            }
        )
        t2, t1 = timing[f"{args.threads}threads"], timing["1thread"]
        print(
            f"compressed {name}: {t2['median_s']:.2f} s wall with {args.threads} threads (first call "
            f"{t2['first_s']:.2f} s), {t1['median_s']:.2f} s with 1 thread ({t1['cpu_median_s']:.2f} s CPU)",
            flush=True,
        )
    if args.investigate:  # Module.to(memory_format=...) works in place: convert copies
        for name in OPTIMISED:
            models[f"{name}+channels_last"] = copy.deepcopy(models[name]).to(memory_format=torch.channels_last)
        example = torch.randn(2, *SHAPE)
        for name in OPTIMISED:
            with torch.inference_mode():
                traced = torch.jit.trace(copy.deepcopy(models[name]), example)
            models[f"{name}+jit_ofi"] = torch.jit.optimize_for_inference(traced)
    speed = {
        "batch1": interleaved_ratios(models, batch=1, reps=5 * reps, inner=10),
        "batch128": interleaved_ratios(models, batch=128, reps=reps, inner=1),
    }
    for row in rows:
        row["speedup_batch1"] = speed["batch1"][row["variant"]]["speedup_median"]
        row["speedup_batch128"] = speed["batch128"][row["variant"]]["speedup_median"]
    extra = {}
    if args.investigate:
        for suffix in ("channels_last", "jit_ofi"):
            extra[suffix] = {}
            for name in OPTIMISED:
                key = f"{name}+{suffix}"
                extra[suffix][key] = {b: dict(speed[b][key]) for b in speed}
                for b in speed:  # speed-up against the dense model run the same way
                    ref = speed[b][f"dense+{suffix}"]["median_s"]
                    extra[suffix][key][b]["speedup_vs_same_format_dense"] = ref / speed[b][key]["median_s"]
        small = models["global/channel/0.7"]
        extra["layers_global_0.7_batch128"] = layer_timings(dense, small, 128, reps=5)
        extra["layers_uniform_0.7_batch128"] = layer_timings(dense, models["uniform/channel/0.7"], 128, reps=5)
        extra["layers_uniform_0.7_x16_batch128"] = layer_timings(dense, models["uniform/channel/0.7/x16"], 128, reps=5)
        torch.backends.mkldnn.enabled = False
        try:
            off = interleaved_ratios({"dense": dense, "global/channel/0.7": small}, batch=128, reps=3, inner=1)
        finally:
            torch.backends.mkldnn.enabled = True
        extra["mkldnn_disabled_batch128"] = off

    cols = ("rate", 6), ("params", 11), ("FLOPs x", 8), ("speed b1", 9), ("speed b128", 11), ("compress s 1T", 14)
    head = f"{'variant':<22} " + " ".join(f"{c:>{w}}" for c, w in cols)
    print(head)
    print("-" * len(head))
    print(f"{'dense':<22} {0:>6.3f} {params_dense:>11,} {1:>8.2f} {1:>9.2f} {1:>11.2f} {'':>14}")
    for r in rows:
        one_thread = r["compress_s"]["1thread"]["median_s"]
        print(
            f"{r['variant']:<22} {r['achieved_rate']:>6.3f} {r['params']:>11,} {r['flops_ratio']:>8.2f} "
            f"{r['speedup_batch1']:>9.2f} {r['speedup_batch128']:>11.2f} {one_thread:>14.2f}"
        )
    if args.investigate:
        for key in ("layers_global_0.7_batch128", "layers_uniform_0.7_batch128", "layers_uniform_0.7_x16_batch128"):
            print(f"\n{key}: layer, weight, input HxW, rank, FLOPs ratio, measured speed-up")
            for r in extra.get(key, []):
                print(
                    f"  {r['layer']:<22} {'x'.join(map(str, r['weight'])):<12} {'x'.join(map(str, r['input_hw'])):<6}"
                    f" r={r['rank']:<4} {r['flops_ratio']:>6.2f}x {r['speedup']:>6.2f}x"
                )
        for suffix in ("channels_last", "jit_ofi"):
            for k, v in extra[suffix].items():
                b1, b128 = v["batch1"]["speedup_median"], v["batch128"]["speedup_median"]
                s1 = v["batch1"]["speedup_vs_same_format_dense"]
                s128 = v["batch128"]["speedup_vs_same_format_dense"]
                print(
                    f"{k:<36} speed-up vs dense eager NCHW: b1 {b1:.2f}, b128 {b128:.2f}; "
                    f"vs dense+{suffix}: b1 {s1:.2f}, b128 {s128:.2f}"
                )
        off = extra["mkldnn_disabled_batch128"]["global/channel/0.7"]["speedup_median"]
        print(f"oneDNN disabled, global 0.7 b128 speed-up: {off:.2f}")
    wall = time.time() - t0
    write_json(
        args.out,
        {
            "benchmark": "compress",
            "model": "resnet18 (CIFAR, width 64, random init)",
            "dense": {"params": params_dense, "flops": flops_dense},
            "variants": rows,
            "speed": speed,
            **extra,
            "targets": {"compress_s": "< 2", "speedup_batch128_at_0.7": ">= 1.5"},
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "provenance": provenance("cpu", seed=args.seed, wall_time_s=round(wall, 1), threads=args.threads),
        },
    )
    print(f"wrote {args.out} ({wall:.0f} s; load average before {load_before}, after {load_average()})")


if __name__ == "__main__":
    main()

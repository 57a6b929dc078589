"""How compress time and peak memory grow with model size: CIFAR ResNet-18, a ResNet-50 and a ViT-B/16.

Every (model, mode) runs in a fresh subprocess, so one measurement's allocations cannot lower or raise another's
peak. The child compresses a tiny model first (warm-up: library code pages and thread pools that any compress
touches are then in the baseline), builds the model (random init), collects garbage, resets the kernel's peak-RSS
counter (writing 5 to ``/proc/self/clear_refs``; without it, ``ru_maxrss`` is used and includes the build) and
reads the current RSS as the baseline, then runs ``compress(model, rate)`` once, timed, and reads the peak RSS
(``VmHWM``). ``extra`` is the peak minus the baseline: the memory compression needs on top of the model it was
given, reported as a multiple of the model's parameter bytes. Each (model, mode) is measured ``--repeats`` times
(default 3, each in a fresh process); the table shows the medians and the largest extra.

Modes: ``copy`` (the default, ``compress`` deep-copies the model) and ``inplace`` (``compress(..., inplace=True)``
factorizes layer by layer in the model itself, freeing each dense weight as its factors replace it).

Models (random init, float32, nothing downloaded):

* ``resnet18-cifar``: ``sc.create_model("resnet18", width=64)`` (11.2M parameters);
* ``resnet50``: Hugging Face ``ResNetForImageClassification`` at the ``ResNetConfig`` defaults (the ResNet-50
  layout) with 1000 classes (25.6M);
* ``vit-b16``: Hugging Face ``ViTForImageClassification`` at the ``ViTConfig`` defaults (ViT-B/16, 224 px) with
  1000 classes (86.6M); the patch embedding stays dense (``ViTModel.forward`` reads its ``.weight``).

Run: ``.venv/bin/python benchmarks/bench_scale.py [--rate 0.5] [--threads 2] [--models ...]``; writes
``benchmarks/results/scale.json``. Needs ``transformers`` for the last two models (in the ``[dev]`` extra).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MODELS = ("resnet18-cifar", "resnet50", "vit-b16")
MODES = ("copy", "inplace")


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build(name: str):
    """(model, exclude) for one of :data:`MODELS`, random init, eval mode."""
    import torch

    import smoothcompress as sc

    torch.manual_seed(0)
    if name == "resnet18-cifar":
        return sc.create_model("resnet18", width=64).eval(), ()
    import transformers

    transformers.logging.set_verbosity_error()
    if name == "resnet50":
        return transformers.ResNetForImageClassification(transformers.ResNetConfig(num_labels=1000)).eval(), ()
    if name == "vit-b16":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)).eval()
        return model, ("vit.embeddings.patch_embeddings.projection",)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def child(name: str, mode: str, rate: float, threads: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    import smoothcompress as sc

    torch.set_num_threads(threads)
    # warm-up on a tiny model: library code pages, thread pools and allocator arenas first touched by a compress
    # are then in the baseline, not in the measured extra
    warm = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.Flatten(), torch.nn.Linear(16, 32))
    sc.compress(warm, 0.3)
    sc.compress(warm, 0.3, inplace=True)
    del warm
    model, exclude = build(name)
    params = sc.count_params(model)
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    buffers_mb = sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20
    gc.collect()
    reset = _reset_peak()
    before_kb = _status_kb("VmRSS")
    start = time.perf_counter()
    small = sc.compress(model, rate, exclude=exclude, inplace=mode == "inplace")
    seconds = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM") if reset else None
    if peak_kb is None:  # no peak reset: ru_maxrss, which includes the model build
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    after_kb = _status_kb("VmRSS")
    extra_mb = (peak_kb - before_kb) / 1024 if before_kb is not None else None
    return {
        "model": name,
        "mode": mode,
        "rate": rate,
        "rate_achieved": round(small.sc_compression.rate_achieved, 4),
        "params": params,
        "params_after": sc.count_params(small),
        "factorized_layers": len(small.sc_compression.details["ranks"]),
        "model_mb": round(model_mb, 1),
        "buffers_mb": round(buffers_mb, 1),
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before_kb / 1024, 1) if before_kb is not None else None,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_after_mb": round(after_kb / 1024, 1) if after_kb is not None else None,
        "extra_peak_mb": round(extra_mb, 1) if extra_mb is not None else None,
        "extra_over_model": round(extra_mb / model_mb, 2) if extra_mb is not None else None,
        "peak_method": "VmHWM after clear_refs=5" if reset else "ru_maxrss (includes the build)",
    }


def run_child(name: str, mode: str, rate: float, threads: int, repeats: int) -> dict:
    """``repeats`` fresh-process measurements: the first's fields, with ``seconds`` and ``extra_peak_mb`` the
    medians (``*_runs``: every run; ``extra_peak_mb_max``: the worst, as the allocator's reuse of freed memory
    varies from run to run)."""
    cmd = [sys.executable, __file__, "--child", name, mode, "--rate", str(rate), "--threads", str(threads)]
    runs = []
    for _ in range(repeats):
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            raise RuntimeError(f"{name}/{mode} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    row = dict(runs[0])
    for key in ("seconds", "peak_rss_mb", "extra_peak_mb"):
        values = [r[key] for r in runs]
        row[key], row[f"{key}_runs"] = statistics.median(values), values
    row["extra_peak_mb_max"] = max(row["extra_peak_mb_runs"])
    row["extra_over_model"] = round(row["extra_peak_mb"] / row["model_mb"], 2)
    row["extra_over_model_max"] = round(row["extra_peak_mb_max"] / row["model_mb"], 2)
    return row


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def table(rows: list[dict]) -> str:
    head = (
        "model", "params", "MB", "mode", "rate", "layers", "seconds", "RSS before", "peak", "extra", "extra/model",
        "max",
    )  # fmt: skip
    lines = [
        (
            r["model"],
            f"{r['params'] / 1e6:.1f}M",
            f"{r['model_mb']:.0f}",
            r["mode"],
            f"{r['rate_achieved']:.3f}",
            str(r["factorized_layers"]),
            f"{r['seconds']:.1f}",
            f"{r['rss_before_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['extra_peak_mb']:.0f}",
            f"{r['extra_over_model']:.2f}x",
            f"{r['extra_over_model_max']:.2f}x",
        )  # fmt: skip
        for r in rows
    ]
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per (model, mode); medians shown")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "scale.json")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.rate, args.threads)))
        return

    import torch

    from smoothcompress.files import write_json
    from smoothcompress.provenance import provenance

    t0 = time.time()
    load_before = os.getloadavg()
    rows = []
    for name in args.models:
        for mode in args.modes:
            rows.append(run_child(name, mode, args.rate, args.threads, args.repeats))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    wall = time.time() - t0
    write_json(
        args.out,
        {
            "benchmark": "scale",
            "what": "compress wall time and peak RSS per model size, one fresh subprocess per (model, mode)",
            "rows": rows,
            "command": " ".join(["benchmarks/bench_scale.py", *sys.argv[1:]]),
            "output": _shown(args.out),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "provenance": provenance(
                "cpu", threads=args.threads, torch_threads_parent=torch.get_num_threads(), wall_time_s=round(wall, 1)
            ),
        },
    )
    print(f"wrote {_shown(args.out)} ({wall:.0f} s, load average before {load_before})")


if __name__ == "__main__":
    main()

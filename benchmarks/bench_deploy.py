"""Deployment: bytes on disk, test accuracy and latency (torch eager and onnxruntime) of dense, SVD, int8, sparse and
filter-pruned forms of trained models, and of two larger models timed for speed only.

Models:

* trained run folders given on the command line (``model.safetensors`` and ``config.toml``: ``smoothcompress
  train`` or sweep run folders, e.g. the ResNet-18 width 16 runs of ``cifar10-cpu-frontier-w16``), on the dataset
  of ``--data``: accuracy and speed;
* ``resnet18-w64``: the CIFAR ResNet-18 at the paper's width, random init, speed and bytes only;
* ``gpt2-small``: a GPT-2-small-shaped language model (``transformers.GPT2LMHeadModel`` from its default config,
  random init, token ids of length ``--seq``), speed and bytes only; left out with a note when ``transformers`` is
  not installed.

Forms (variants), each built by ``sc.get_method(name).apply(model, rate, data=train_data)`` at ``--rate`` (fraction
of all parameters removed; GPT-2 at ``--lm-rate``: its embeddings are not compressible):

* ``dense-fp32``; ``svd-fp32`` and ``svd-int8``; ``svd+bn-fp32`` and ``svd+bn-int8``; ``magnitude+bn-sparse`` and
  ``magnitude+bn-sparse-int8`` (checkpoint saved with ``sc.save(..., sparse=True)``; its ONNX file is dense:
  onnxruntime has no sparse convolution); ``filter+bn-fp32``;
* for GPT-2 (no BatchNorm, filter pruning refused for attention): ``dense-fp32``, ``svd-fp32``, ``svd-int8``,
  ``magnitude-sparse``, ``magnitude-sparse-int8``.

int8 files come from :func:`smoothcompress.quantize_onnx`: static QDQ, per-channel weights, activation ranges
calibrated on ``--images`` images of the TRAINING split (random normal inputs for the speed-only ResNet); dynamic
(Linear weights only, no calibration) for GPT-2. BatchNorm statistics of the ``+bn`` forms are re-estimated on the
same number of training images. No gradient step anywhere.

Per form: parameters, bytes of the ``sc.save`` checkpoint (none for int8, which exists only as ONNX) and of the
ONNX file; test accuracy of trained runs (fp32 forms by torch, int8 forms by onnxruntime through
:class:`smoothcompress.OnnxModel`); latency in torch eager and onnxruntime (CPU provider, all graph optimisations)
at batch 1 and 128, on 1 and 2 threads. For each model, batch and thread count, all forms and both engines are
timed in turns (the order rotates every round, one warm-up call each), for ``--reps`` rounds or until ``--budget``
seconds have passed after at least 3 rounds; the median is reported with its ratio to ``dense-fp32`` in the same
engine (int8 against dense fp32 in onnxruntime).

The target checked on the trained runs penalised with the nuclear norm, at rate 0.7: ``svd+bn-int8`` loses at most
0.5 points of test accuracy more than ``svd+bn-fp32``, in at most 1/12 of the bytes of the dense fp32 ONNX file
(the ratio to the dense checkpoint is printed too). Printed as met or missed, with the margins.

Run (after the runs have finished; one process, alone on the machine, for honest latencies)::

    .venv/bin/python benchmarks/bench_deploy.py runs/cifar10-cpu-frontier-w16/shard-*/runs/*/ \\
        --data ../shared/data/cifar10-jpeg.tar.gz
    .venv/bin/python benchmarks/plot_deploy.py   # accuracy against bytes and milliseconds: deploy.png

Writes ``benchmarks/results/deploy.json`` after every (model, form) and after each model's timing, so a killed run
resumes where it stopped (the files it made stay in ``--work``, default ``runs/bench-deploy/``). ``--quick``: a smoke
test of the script, not a result (width 4 ResNet, a 2-layer GPT-2, 64 calibration images, 2 rounds, batches 1 and
8), written to ``runs/bench-deploy-quick/deploy.json`` unless ``--out`` is given; e.g. with a run trained on the
bundled digits: ``smoothcompress train --dataset digits --model cnn --epochs 1 --out /tmp/r && .venv/bin/python
benchmarks/bench_deploy.py /tmp/r --data digits --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _common import REPO, data_provenance, rel  # noqa: E402  (benchmarks/, the script's folder)
from torch import nn

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance
from smoothcompress.study.data import load_dataset
from smoothcompress.study.training import TrainConfig, evaluate

RESULTS = REPO / "benchmarks" / "results" / "deploy.json"
WORK = REPO / "runs" / "bench-deploy"
QUICK_WORK = REPO / "runs" / "bench-deploy-quick"

# name: (method, int8, sparse checkpoint)
VARIANTS = {
    "dense-fp32": (None, False, False),
    "svd-fp32": ("svd", False, False),
    "svd-int8": ("svd", True, False),
    "svd+bn-fp32": ("svd+bn", False, False),
    "svd+bn-int8": ("svd+bn", True, False),
    "magnitude+bn-sparse": ("magnitude+bn", False, True),
    "magnitude+bn-sparse-int8": ("magnitude+bn", True, True),
    "filter+bn-fp32": ("filter+bn", False, False),
}
LM_VARIANTS = {
    "dense-fp32": (None, False, False),
    "svd-fp32": ("svd", False, False),
    "svd-int8": ("svd", True, False),
    "magnitude-sparse": ("magnitude", False, True),
    "magnitude-sparse-int8": ("magnitude", True, True),
}
ENGINES = ("eager", "onnxruntime")
MIN_ROUNDS = 3  # timing rounds before the time budget may stop them

TARGET_RATE = 0.7
TARGET_DROP_POINTS = 0.5  # svd+bn int8 loses at most this much more than svd+bn fp32
TARGET_BYTES = 1 / 12  # of the dense fp32 ONNX file


@dataclass
class Subject:
    """One model of the benchmark: how to build it, what it takes, its forms and where its data comes from."""

    name: str
    kind: str  # "trained" or "speed"
    build: Callable[[], nn.Module]
    example: Callable[[int], torch.Tensor]  # batch -> one input of that batch size
    variants: dict[str, tuple]
    rate: float
    calibration: object  # training Dataset or a float tensor (None: dynamic int8, no data methods)
    int8_mode: str = "static"
    dataset: object = None  # Dataset for accuracy (trained runs)
    skeleton: Callable[[], nn.Module] | None = None  # for sc.load of a model not built by the registry
    info: dict = field(default_factory=dict)


def onnx_bytes(path: Path) -> int:
    """Bytes of an ONNX file plus its external-data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def seeded(make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with torch's generator seeded (random init the same in every run), in eval mode."""
    torch.manual_seed(0)
    return make().eval()


def gpt2_builder(quick: bool) -> Callable[[], nn.Module] | None:
    try:
        import transformers
    except ImportError:
        return None
    if quick:
        kwargs = {
            "n_layer": 2,
            "n_embd": 64,
            "n_head": 2,
            "vocab_size": 128,
            "n_positions": 64,
            "bos_token_id": 0,
            "eos_token_id": 0,
        }
    else:
        kwargs = {}  # GPT-2 small: 12 layers, 768 wide, 12 heads, 50257 tokens, 124M parameters
    config = transformers.GPT2Config(use_cache=False, **kwargs)

    return lambda: seeded(lambda: transformers.GPT2LMHeadModel(config))


def subjects(args: argparse.Namespace, ds) -> tuple[list[Subject], list[str]]:
    """The models to benchmark, and notes on those left out."""
    out, notes = [], []
    images = args.images
    for run in args.runs:
        config = TrainConfig.from_toml(run / "config.toml")
        shape = tuple(ds.input_shape)
        out.append(
            Subject(
                name=run.name,
                kind="trained",
                build=lambda run=run: sc.load(run / "model.safetensors").eval(),
                example=lambda b, shape=shape: torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)),
                variants=VARIANTS,
                rate=args.rate,
                calibration=ds,
                dataset=ds,
                info={
                    "run": rel(run),
                    "reg": config.reg,
                    "weight": config.weight,
                    "seed": config.seed,
                    "reg_target_rate": config.reg_target_rate,
                    "width": config.width,
                    "arch": config.model,
                },
            )  # fmt: skip
        )
    width = 4 if args.quick else 64
    out.append(
        Subject(
            name=f"resnet18-w{width}",
            kind="speed",
            build=lambda: seeded(lambda: sc.create_model("resnet18", num_classes=10, width=width)),
            example=lambda b: torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b)),
            variants=VARIANTS,
            rate=args.rate,
            calibration=torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
            info={"arch": "resnet18", "width": width, "init": "random", "calibration": "random normal"},
        )
    )
    build = gpt2_builder(args.quick)
    if args.no_speed_models:
        return [s for s in out if s.kind == "trained"], notes
    if build is None:
        notes.append("gpt2-small left out: transformers is not installed (pip install 'smoothcompress[hf]')")
    else:
        vocab = build().config.vocab_size
        out.append(
            Subject(
                name="gpt2-tiny" if args.quick else "gpt2-small",
                kind="speed",
                build=build,
                example=lambda b: torch.randint(0, vocab, (b, args.seq), generator=torch.Generator().manual_seed(b)),
                variants=LM_VARIANTS,
                rate=args.lm_rate,
                calibration=None,
                int8_mode="dynamic",
                skeleton=build,
                info={"arch": "gpt2", "init": "random", "seq": args.seq, "vocab": vocab},
            )
        )
    return out, notes


def make_form(subject: Subject, model: nn.Module, method: str | None, cache: dict, images: int) -> nn.Module:
    """``model`` through ``method`` at the subject's rate (cached: an int8 form reuses its fp32 model)."""
    if method is None:
        return model
    if method not in cache:
        m = sc.get_method(method)
        data = {"data": subject.calibration, "images": images} if m.uses_data() else {}
        cache[method] = m.apply(model, subject.rate, **data).eval()
    return cache[method]


def export_args(subject: Subject) -> dict:
    if subject.int8_mode == "dynamic":  # token ids
        return {"example_input": subject.example(1)}
    return {"input_shape": tuple(subject.example(1).shape)}


def build_form(subject: Subject, variant: str, model: nn.Module, cache: dict, folder: Path, args) -> dict:
    """Make one form's files in ``folder`` and measure its bytes and (trained runs) its accuracy: one row."""
    method, int8, sparse = subject.variants[variant]
    form = make_form(subject, model, method, cache, args.images)
    checkpoint = folder / f"{variant}.safetensors"
    onnx = folder / f"{variant}.onnx"
    row = {"model": subject.name, "kind": subject.kind, "variant": variant, "method": method or "dense",
           "rate": subject.rate if method else 0.0,
           "rate_achieved": rec.rate_achieved if (rec := getattr(form, "sc_compression", None)) else 0.0,
           "params": sc.count_params(form), "nonzero_params": sc.count_params(form, nonzero=True),
           **subject.info}  # fmt: skip
    start = time.perf_counter()
    if int8:
        data = subject.calibration if subject.int8_mode == "static" else None
        extra = {"images": args.images} if data is not None else export_args(subject)
        sc.quantize_onnx(form, onnx, data, mode=subject.int8_mode, **extra)
        row["checkpoint_bytes"] = None
        row["quantization"] = sc.read_onnx_record(onnx)["quantization"]
    else:
        sc.save(form, checkpoint, sparse=sparse)
        sc.export_onnx(form, onnx, **export_args(subject))
        row["checkpoint_bytes"] = checkpoint.stat().st_size
        row["sparse_checkpoint"] = sparse
    row["onnx_bytes"] = onnx_bytes(onnx)
    row["build_seconds"] = round(time.perf_counter() - start, 1)
    if subject.dataset is not None:
        if int8:
            row["accuracy"] = evaluate(sc.OnnxModel(onnx, threads=max(args.threads)), subject.dataset)
            row["accuracy_engine"] = "onnxruntime"
        else:
            row["accuracy"] = evaluate(form, subject.dataset)
            row["accuracy_engine"] = "torch"
    return row


def timed_in_turns(calls: dict[str, Callable[[], object]], rounds: int, budget: float) -> dict[str, dict]:
    """Median milliseconds of each call, the calls timed in rotating turns: ``rounds`` rounds, or fewer (at least
    :data:`MIN_ROUNDS`) once ``budget`` seconds have passed."""
    names = list(calls)
    for name in names:  # warm-up
        calls[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
        if r + 1 >= min(MIN_ROUNDS, rounds) and time.perf_counter() - start > budget:
            break
    return {n: {"ms": round(1e3 * statistics.median(ts), 3), "rounds": len(ts)} for n, ts in times.items()}


def time_subject(subject: Subject, rows: dict[str, dict], folder: Path, args) -> None:
    """Latency of every form of ``subject`` in both engines, timed in turns; written into its rows."""
    eager: dict[str, nn.Module] = {}
    for variant, (_, int8, _) in subject.variants.items():
        if not int8:
            skeleton = subject.skeleton() if subject.skeleton is not None else None
            eager[variant] = sc.load(folder / f"{variant}.safetensors", model=skeleton).eval()
    for row in rows.values():
        row["latency"] = {}
    for threads in args.threads:
        sessions = {v: sc.OnnxModel(folder / f"{v}.onnx", threads=threads).session for v in subject.variants}
        torch.set_num_threads(threads)
        for batch in args.batches:
            x = subject.example(batch)
            feed = {"input": x.numpy()}
            calls: dict[str, Callable[[], object]] = {}
            for v, s in sessions.items():
                calls[f"onnxruntime/{v}"] = lambda s=s, feed=feed: s.run(None, feed)
            for v, m in eager.items():
                calls[f"eager/{v}"] = lambda m=m, x=x: m(x)
            with torch.inference_mode():
                got = timed_in_turns(calls, args.reps, args.budget)
            cell = f"batch{batch}-threads{threads}"
            for key, t in got.items():
                engine, variant = key.split("/", 1)
                ref = got[f"{engine}/dense-fp32"]["ms"]
                rows[variant]["latency"].setdefault(engine, {})[cell] = {**t, "vs_dense": round(t["ms"] / ref, 4)}
            print(f"  {subject.name}: {cell} timed ({next(iter(got.values()))['rounds']} rounds)", flush=True)
        del sessions
    dense = rows["dense-fp32"]
    for row in rows.values():
        row["onnx_bytes_vs_dense"] = round(row["onnx_bytes"] / dense["onnx_bytes"], 4)
        row["bytes_vs_dense_checkpoint"] = round(
            (row["checkpoint_bytes"] or row["onnx_bytes"]) / dense["checkpoint_bytes"], 4
        )


def target(rows: list[dict], rate: float) -> dict:
    """The deployment target on the nuclear-trained runs at rate 0.7 (see the module docstring)."""
    if rate != TARGET_RATE:
        return {"status": "not applicable", "why": f"the target is stated at rate {TARGET_RATE}, this run used {rate}"}
    by = {(r["model"], r["variant"]): r for r in rows}
    runs = sorted({r["model"] for r in rows if r["kind"] == "trained" and r.get("reg") == "nuclear"})
    checks = []
    for run in runs:
        fp32, int8, dense = (by.get((run, v)) for v in ("svd+bn-fp32", "svd+bn-int8", "dense-fp32"))
        if fp32 is None or int8 is None or dense is None:
            continue
        drop = 100 * (fp32["accuracy"] - int8["accuracy"])
        ratio = int8["onnx_bytes"] / dense["onnx_bytes"]
        checks.append({
            "run": run, "accuracy_fp32": fp32["accuracy"], "accuracy_int8": int8["accuracy"],
            "drop_points": round(drop, 3), "drop_margin_points": round(TARGET_DROP_POINTS - drop, 3),
            "bytes_vs_dense_onnx": round(ratio, 4), "bytes_margin": round(TARGET_BYTES - ratio, 4),
            "bytes_vs_dense_checkpoint": round(int8["onnx_bytes"] / dense["checkpoint_bytes"], 4),
            "met": drop <= TARGET_DROP_POINTS and ratio <= TARGET_BYTES,
        })  # fmt: skip
    if not checks:
        return {"status": "no data", "why": "no nuclear-trained run with svd+bn fp32 and int8 rows"}
    return {"status": "met" if all(c["met"] for c in checks) else "missed", "runs": checks}


def print_table(rows: list[dict], args) -> None:
    cells = [f"batch{b}-threads{t}" for t in args.threads for b in args.batches]
    head = " ".join(f"{e[:4]} {c.replace('batch', 'b').replace('-threads', '/t'):>8}" for e in ENGINES for c in cells)
    for name in dict.fromkeys(r["model"] for r in rows):
        print(f"\n{name}")
        print(f"  {'form':<25} {'params':>10} {'ckpt B':>10} {'onnx B':>10} {'xdense':>6} {'acc %':>6}  ms: {head}")
        for r in (r for r in rows if r["model"] == name):
            acc = f"{100 * r['accuracy']:6.2f}" if "accuracy" in r else f"{'-':>6}"
            ms = []
            for e in ENGINES:
                for c in cells:
                    t = r.get("latency", {}).get(e, {}).get(c)
                    ms.append(f"{t['ms']:>13.3f}" if t else f"{'-':>13}")
            ckpt = r["checkpoint_bytes"] if r["checkpoint_bytes"] is not None else "-"
            print(
                f"  {r['variant']:<25} {r['params']:>10} {ckpt:>10} {r['onnx_bytes']:>10} "
                f"{r.get('onnx_bytes_vs_dense', float('nan')):>6.3f} {acc}      {' '.join(ms)}"
            )


def print_target(result: dict) -> None:
    print(
        f"\ntarget (nuclear-trained runs, rate {TARGET_RATE}: svd+bn int8 loses <= {TARGET_DROP_POINTS} points more "
        f"than svd+bn fp32, in <= 1/12 of the dense fp32 bytes): {result['status'].upper()}"
    )
    if "why" in result:
        print(f"  ({result['why']})")
    for c in result.get("runs", []):
        print(
            f"  {c['run']}: {'met' if c['met'] else 'MISSED'}; drop {c['drop_points']:+.2f} points "
            f"(margin {c['drop_margin_points']:+.2f}), bytes {c['bytes_vs_dense_onnx']:.4f} of the dense ONNX file "
            f"(1/12 = {TARGET_BYTES:.4f}, margin {c['bytes_margin']:+.4f}; {c['bytes_vs_dense_checkpoint']:.4f} of "
            "the dense checkpoint)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="trained run folders (model.safetensors, config.toml)")
    p.add_argument("--data", help="the dataset the runs were trained on (needed with runs)")
    p.add_argument("--rate", type=float, default=TARGET_RATE, help="fraction of parameters removed (0.7)")
    p.add_argument("--lm-rate", type=float, default=0.5, help="GPT-2's rate (its embeddings stay: 0.5)")
    p.add_argument("--images", type=int, default=2048, help="training images for int8 calibration and BN")
    p.add_argument("--seq", type=int, default=64, help="GPT-2 sequence length (tokens)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    p.add_argument("--reps", type=int, default=20, help="timing rounds per cell at most")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per timing cell after 3 rounds")
    p.add_argument("--no-speed-models", action="store_true", help="only the trained runs")
    p.add_argument("--quick", action="store_true", help="smoke test of the script (see the docstring)")
    p.add_argument("--out", type=Path, default=None, help="output JSON (default benchmarks/results/deploy.json)")
    p.add_argument("--work", type=Path, default=None, help="folder for the files made (default runs/bench-deploy)")
    args = p.parse_args()
    if args.runs and args.data is None:
        p.error("trained runs need --data: the dataset they were trained on")
    if args.quick:
        args.images, args.reps, args.budget, args.seq, args.batches = 64, 2, 5.0, 16, [1, 8]
    work = args.work or (QUICK_WORK if args.quick else WORK)
    out = args.out or (QUICK_WORK / "deploy.json" if args.quick else RESULTS)
    ds = load_dataset(args.data) if args.data is not None else None
    settings = {"rate": args.rate, "lm_rate": args.lm_rate, "images": args.images, "seq": args.seq,
                "threads": args.threads, "batches": args.batches, "quick": args.quick}  # fmt: skip
    old = json.loads(out.read_text()) if out.exists() else {}
    if old and old.get("settings") != settings:
        p.error(f"{rel(out)} holds results of other settings {old.get('settings')}; pass another --out")
    rows: list[dict] = old.get("rows", [])
    all_subjects, notes = subjects(args, ds)
    extra = {"script": rel(__file__), "settings": settings, "loadavg_start": os.getloadavg()}
    meta = data_provenance(ds, args.data, **extra) if ds is not None else provenance("cpu", **extra)

    def save() -> None:
        write_json(out, {"provenance": meta, "settings": settings, "notes": notes, "rows": rows,
                         "target": target(rows, args.rate)})  # fmt: skip

    for note in notes:
        print(f"note: {note}")
    torch.set_num_threads(max(args.threads))
    for subject in all_subjects:
        folder = work / subject.name
        folder.mkdir(parents=True, exist_ok=True)
        mine = {r["variant"]: r for r in rows if r["model"] == subject.name}
        for variant in list(mine):  # a row whose files are gone is made again
            name = folder / f"{variant}.onnx"
            if not name.exists() or (
                not subject.variants[variant][1] and not name.with_suffix(".safetensors").exists()
            ):
                rows.remove(mine.pop(variant))
        model, cache = None, {}
        for variant in subject.variants:
            if variant in mine:
                continue
            model = model if model is not None else subject.build()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # exporter and quantizer chatter
                row = build_form(subject, variant, model, cache, folder, args)
            rows.append(row)
            mine[variant] = row
            save()
            acc = f", {100 * row['accuracy']:.2f}%" if "accuracy" in row else ""
            print(f"{subject.name} {variant}: {row['onnx_bytes']} B onnx{acc} ({row['build_seconds']} s)", flush=True)
        del model, cache
        if any("latency" not in r for r in mine.values()):
            time_subject(subject, mine, folder, args)
            torch.set_num_threads(max(args.threads))
            save()
    print_table(rows, args)
    print_target(target(rows, args.rate))
    print(f"\nwrote {rel(out)}")


if __name__ == "__main__":
    main()

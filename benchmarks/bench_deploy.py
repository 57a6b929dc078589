"""Bytes on disk and onnxruntime latency of the deployable forms of one model: dense, SVD, SVD int8, sparse, filter.

The CIFAR ResNet-18 at width 16 (``sc.create_model("resnet18", num_classes=10, width=16)``, random init: bytes and
latency depend only on the layer shapes and the zeros; accuracy is measured elsewhere) in five forms:

* ``dense-fp32``: the model as it is;
* ``svd-fp32``: ``sc.compress(model, rate)``;
* ``svd-int8``: that model through :func:`smoothcompress.quantize_onnx` (static, QDQ, per-channel weights; the
  activation ranges calibrated on random normal inputs, which is enough for bytes and latency, not for accuracy);
* ``magnitude-sparse``: ``sc.prune(model, rate, method="magnitude")``, saved with ``sc.save(..., sparse=True)``;
  its ONNX file is dense (onnxruntime has no sparse convolution), so its latency is the dense model's;
* ``filter-fp32``: ``sc.prune(model, rate, method="filter")``, narrower layers.

Bytes: the ``sc.save`` checkpoint (``null`` for int8, which exists only as ONNX) and the ONNX file (with its
``.data`` file of external weights for the float exports). Latency: onnxruntime on the CPU provider, all graph
optimisations, one intra-op and one inter-op thread, at batch 1 and batch 128; the forms are timed in turns (the
order rotates every repetition) after one warm-up pass each, and the median over repetitions is reported, with
the relative output error (L2) of each form against the dense fp32 file (int8 against ``svd-fp32``) on the batch
of 128.

Run: ``.venv/bin/python benchmarks/bench_deploy.py [--rate 0.7] [--reps 20] [--quick] [--out PATH]``. Writes
``benchmarks/results/deploy.json`` (``--quick``: width 4, 2 repetitions, 32 calibration inputs, and
``benchmarks/results/deploy-quick.json`` unless ``--out`` is given; a smoke test of the script, not a result).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import rel  # noqa: E402  (benchmarks/, the script's folder)

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "deploy.json"
QUICK_RESULTS = RESULTS.with_name("deploy-quick.json")
SHAPE = (3, 32, 32)
BATCHES = (1, 128)


def onnx_bytes(path: Path) -> int:
    """Bytes of an ONNX file plus its external-data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def timed_in_turns(sessions: dict, x: np.ndarray, reps: int) -> dict[str, float]:
    """Median milliseconds of one run of each session on ``x``, the sessions timed in rotating turns."""
    names = list(sessions)
    for name in names:
        sessions[name].run(None, {"input": x})
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            t = time.perf_counter()
            sessions[name].run(None, {"input": x})
            times[name].append(time.perf_counter() - t)
    return {n: round(1e3 * statistics.median(ts), 3) for n, ts in times.items()}


def build(width: int, rate: float, calibration_images: int, seed: int, folder: Path) -> dict[str, dict]:
    """The five forms: their files in ``folder`` and what each is."""
    torch.manual_seed(seed)
    dense = sc.create_model("resnet18", num_classes=10, width=width).eval()
    svd = sc.compress(dense, rate).eval()
    magnitude = sc.prune(dense, rate, method="magnitude").eval()
    filt = sc.prune(dense, rate, method="filter").eval()
    calibration = torch.randn(calibration_images, *SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    shape = (1, *SHAPE)
    forms: dict[str, dict] = {}
    for name, model, sparse in (
        ("dense-fp32", dense, False),
        ("svd-fp32", svd, False),
        ("magnitude-sparse", magnitude, True),
        ("filter-fp32", filt, False),
    ):
        checkpoint = sc.save(model, folder / f"{name}.safetensors", sparse=sparse)
        onnx_path = sc.export_onnx(model, folder / f"{name}.onnx", shape)
        forms[name] = {
            "params": sc.count_params(model),
            "nonzero_params": sc.count_params(model, nonzero=True),
            "rate": record.rate_achieved if (record := getattr(model, "sc_compression", None)) else 0.0,
            "checkpoint_bytes": checkpoint.stat().st_size,
            "onnx_bytes": onnx_bytes(onnx_path),
            "onnx": onnx_path,
            "reference": "dense-fp32",
        }
    int8 = sc.quantize_onnx(svd, folder / "svd-int8.onnx", calibration, images=calibration_images)
    forms["svd-int8"] = {
        **{k: forms["svd-fp32"][k] for k in ("params", "nonzero_params", "rate")},
        "checkpoint_bytes": None,
        "onnx_bytes": onnx_bytes(int8),
        "onnx": int8,
        "reference": "svd-fp32",
        "quantization": sc.read_onnx_record(int8)["quantization"],
    }
    order = ("dense-fp32", "svd-fp32", "svd-int8", "magnitude-sparse", "filter-fp32")
    return {name: forms[name] for name in order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.7, help="fraction of parameters removed (svd, pruning)")
    parser.add_argument("--reps", type=int, default=20, help="timed runs per form and batch")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="width 4, 2 repetitions, 32 calibration inputs")
    parser.add_argument("--out", type=Path, default=None, help="output JSON (default benchmarks/results/...)")
    args = parser.parse_args()
    if args.quick:
        args.width, args.reps, args.calibration_images = 4, 2, 32
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    torch.set_num_threads(1)
    t0, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forms = build(args.width, args.rate, args.calibration_images, args.seed, Path(tmp))
        sessions = {name: session(form.pop("onnx")) for name, form in forms.items()}
        rng = np.random.default_rng(args.seed)
        for batch in BATCHES:
            x = rng.standard_normal((batch, *SHAPE), dtype=np.float32)
            for name, ms in timed_in_turns(sessions, x, args.reps).items():
                forms[name][f"ms_batch{batch}"] = ms
            print(f"batch {batch} timed", flush=True)
        outputs = {name: s.run(None, {"input": x})[0] for name, s in sessions.items()}
    for name, form in forms.items():
        ref = outputs[form["reference"]]
        form["relative_error"] = float(np.linalg.norm(outputs[name] - ref) / np.linalg.norm(ref))
    dense = forms["dense-fp32"]
    for form in forms.values():
        form["onnx_bytes_vs_dense"] = round(form["onnx_bytes"] / dense["onnx_bytes"], 4)
        if form["checkpoint_bytes"] is not None:
            form["checkpoint_bytes_vs_dense"] = round(form["checkpoint_bytes"] / dense["checkpoint_bytes"], 4)
    write_json(
        out,
        {
            "provenance": provenance(
                "cpu",
                script=rel(__file__),
                threads=1,
                quick=args.quick,
                seed=args.seed,
                wall_time_s=round(time.time() - t0, 1),
                load_average_before=[round(v, 2) for v in load_before],
                load_average_after=[round(v, 2) for v in os.getloadavg()],
            ),
            "model": f"resnet18 (CIFAR, width {args.width}, random init)",
            "rate": args.rate,
            "batches": list(BATCHES),
            "reps": args.reps,
            "forms": forms,
        },
    )
    for name, form in forms.items():
        print(
            f"{name:17s} checkpoint {form['checkpoint_bytes'] or '-':>9} B  onnx {form['onnx_bytes']:>9} B  "
            f"batch1 {form['ms_batch1']:8.3f} ms  batch128 {form['ms_batch128']:9.3f} ms  "
            f"rel.err {form['relative_error']:.4f}"
        )
    print(f"wrote {rel(out)}")


if __name__ == "__main__":
    main()

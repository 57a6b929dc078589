"""Which cheap schedule of the nuclear penalty trains to the same model as the every-step SVD?

Trains CIFAR ResNet-18 (width 16, 5 epochs, batch 512, lr 0.4: the cifar10-cpu 5-epoch settings) with the nuclear
penalty at weight 3e-4 under each candidate schedule, for each seed, then measures on the test split the dense
accuracy and the accuracy after SVD compression (no fine-tuning) at 70% and 80% fewer parameters, plain ("svd") and
with BatchNorm recalibration ("svd+bn", 2,048 training images, forward passes only).

Candidates (``Smoothness`` options, see :mod:`smoothcompress.regularize`):

* ``every10``: the exact penalty on every 10th step, scaled by 10;
* ``refresh10``: the lagged gradient: ``U V^T`` recomputed every 10th step, a fixed linear term in between;
* ``prox-every10``: singular-value soft-thresholding after every 10th step (no loss term);
* ``newton-schulz``: ``U V^T`` from five Newton-Schulz iterations on every step, no SVD.

The reference, the every-step SVD, is the rows ``nuclear-s*`` of ``benchmarks/results/data_aware.json`` (same
settings, same seeds; ``--train-reference`` trains it here instead). A candidate is *within the seed spread* when,
for the dense accuracy and for SVD at 70% and 80%, its mean over seeds is no lower than the reference's mean minus
the reference's spread (max - min over seeds) or the candidate's own, whichever is larger. One-sided: a schedule
must not cost accuracy; one that compresses better is no reason to keep the every-step SVD. Both signed
differences are in the JSON. Step-time ratios come
from ``benchmarks/results/regularize.json`` (``bench_regularize.py``, full-width ResNet-18 on 2 threads): one plus
the penalty's own time per step over the plain step (see :data:`STEP_ROW`).

Run: ``.venv/bin/python benchmarks/bench_nuclear_schedule.py [--seeds 0 1] [--only refresh10 every10]``.
Writes ``benchmarks/results/nuclear_schedule.json`` after every run; a rerun skips what is done and resumes an
interrupted training from its checkpoint (``runs/nuclear-schedule/<candidate>-s<seed>``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import data_provenance, rel  # noqa: E402  (benchmarks/, the script's folder)

from smoothcompress.files import write_json
from smoothcompress.methods import get_method
from smoothcompress.study.data import load_dataset
from smoothcompress.study.training import TrainConfig, evaluate, run

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "nuclear_schedule.json"
REFERENCE = REPO / "benchmarks" / "results" / "data_aware.json"
STEP_RATIOS = REPO / "benchmarks" / "results" / "regularize.json"
RUNS = REPO / "runs" / "nuclear-schedule"

WEIGHT = 3e-4  # the cifar10-cpu nuclear weight: every candidate is judged at the reference's weight
TRAIN = dict(  # the cifar10-cpu 5-epoch settings (configs/cifar10-cpu.toml before v2)
    dataset="cifar10", model="resnet18", width=16, epochs=5, batch_size=512, lr=0.4, device="cpu", reg="nuclear"
)
CANDIDATES: dict[str, dict] = {  # every option spelled out, so that no trainer default changes a candidate
    "every-step": {"reg_every": 1, "reg_refresh": 1},
    "every10": {"reg_every": 10, "reg_refresh": 1},
    "refresh10": {"reg_every": 1, "reg_refresh": 10},
    "prox-every10": {"reg_proximal": True, "reg_every": 10, "reg_refresh": 1},
    "newton-schulz": {"reg_polar": "newton-schulz", "reg_every": 1, "reg_refresh": 1},
}
# Each candidate's step cost in bench_regularize's rows: 1 + (the penalty's own time per step) / (plain step), the
# "alone" figures. They are steadier on a shared machine than whole-step ratios, whose noise there exceeds the
# few percent that separate the cheap schedules (both are in regularize.json).
STEP_ROW = {
    "every-step": "nuclear",
    "every10": "nuclear-every10",
    "refresh10": "nuclear-refresh10",
    "prox-every10": "nuclear-prox-every10",
    "newton-schulz": "nuclear-newton-schulz",
}
METRICS = (("dense", 0.0), ("svd", 0.7), ("svd", 0.8), ("svd+bn", 0.7), ("svd+bn", 0.8))
JUDGED = METRICS[:3]  # the accuracies the issue judges a schedule by: dense, plain SVD at 70% and 80%
IMAGES = 2048  # calibration images of svd+bn


def reference_rows() -> list[dict]:
    """The every-step rows (nuclear, weight 3e-4) of the data-aware benchmark, in this benchmark's row format."""
    if not REFERENCE.exists():
        return []
    data = json.loads(REFERENCE.read_text())
    rows = []
    for r in data["rows"]:
        if r["reg"] != "nuclear" or r.get("variant") or (r["method"], r["rate"]) not in METRICS:
            continue
        rows.append(
            {
                "candidate": "every-step",
                "seed": r["seed"],
                "method": r["method"],
                "rate": r["rate"],
                "accuracy": r["accuracy"],
                "source": f"{rel(REFERENCE)} (commit {data['commit'][:10]})",
            }
        )
    return rows


def train_and_measure(name: str, seed: int, ds, data: str, threads: int) -> list[dict]:
    """Train one candidate at one seed (resuming), then the rows of :data:`METRICS` on the test split."""
    out = RUNS / f"{name}-s{seed}"
    done = (out / "model.safetensors").exists()
    config = TrainConfig(
        **TRAIN,
        **CANDIDATES[name],
        weight=WEIGHT,
        data=data,
        seed=seed,
        out=str(out),
        resume=(out / "checkpoint.pt").exists() and not done,
    )
    torch.set_num_threads(threads)
    start = time.perf_counter()
    if done:
        import smoothcompress as sc

        model = sc.load(out / "model.safetensors")
        train_s = json.loads((out / "timing.json").read_text())["train_s"] if (out / "timing.json").exists() else None
    else:
        result = run(config)
        model, train_s = result.model, result.wall_time
        write_json(out / "timing.json", {"train_s": train_s})
    model.eval()
    rows = []
    for method, rate in METRICS:
        t0 = time.perf_counter()
        compressed = model if method == "dense" else get_method(method).apply(model, rate, data=ds, images=IMAGES)
        acc = evaluate(compressed, ds)  # the test split
        rows.append(
            {
                "candidate": name,
                "seed": seed,
                "method": method,
                "rate": rate,
                "accuracy": acc,
                "train_s": train_s,
                "eval_s": time.perf_counter() - t0,
                "run_dir": rel(out),
            }
        )
        print(f"{name:<14} s{seed} {method:<7} {rate:.1f}  {100 * acc:.2f}", flush=True)
    print(f"{name} s{seed}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per candidate and metric: mean, spread (max - min) and the seeds, in accuracy points (%)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["candidate"], r["method"], r["rate"]), []).append(100 * r["accuracy"])
    out: dict[str, dict] = {}
    for (cand, method, rate), accs in groups.items():
        out.setdefault(cand, {})[f"{method}@{rate:g}"] = {
            "mean": statistics.fmean(accs),
            "spread": max(accs) - min(accs),
            "seeds": len(accs),
        }
    return out


def judge(summary: dict[str, dict], ratios: dict[str, float | None]) -> dict:
    """Which candidates sit within the seed spread of every-step on :data:`JUDGED`, and the fastest of them."""
    ref = summary.get("every-step", {})
    verdicts = {}
    for cand, metrics in summary.items():
        if cand == "every-step":
            continue
        diffs, ok = {}, True
        for method, rate in JUDGED:
            key = f"{method}@{rate:g}"
            if key not in metrics or key not in ref or metrics[key]["seeds"] < 2 or ref[key]["seeds"] < 2:
                ok = None if ok is not False else False
                continue
            diff = metrics[key]["mean"] - ref[key]["mean"]
            tol = max(ref[key]["spread"], metrics[key]["spread"])
            diffs[key] = {"diff": diff, "tolerance": tol}
            ok = ok if diff >= -tol else False
        verdicts[cand] = {"within_spread": ok, "diffs": diffs, "step_ratio": ratios.get(cand)}
    passing = [c for c, v in verdicts.items() if v["within_spread"] and v["step_ratio"] is not None]
    fastest = min(passing, key=lambda c: verdicts[c]["step_ratio"]) if passing else None
    return {"candidates": verdicts, "fastest_within_spread": fastest}


def step_ratios() -> dict[str, float | None]:
    if not STEP_RATIOS.exists():
        return {}
    rows = json.loads(STEP_RATIOS.read_text())["step"]
    found = {cand: rows.get(row, {}) for cand, row in STEP_ROW.items()}
    return {cand: row.get("ratio_from_penalty_alone", row.get("ratio")) for cand, row in found.items()}


def print_table(summary: dict[str, dict], verdict: dict) -> None:
    keys = [f"{m}@{r:g}" for m, r in METRICS]
    print(f"\n{'candidate':<15}{'step':>6}" + "".join(f"{k:>13}" for k in keys) + "  within spread")
    for cand, metrics in summary.items():
        v = verdict["candidates"].get(cand, {})
        ratio = v.get("step_ratio") if v else step_ratios().get(cand)
        cells = "".join(
            f"{metrics[k]['mean']:8.2f}±{metrics[k]['spread'] / 2:4.2f}" if k in metrics else f"{'':>13}" for k in keys
        )
        print(f"{cand:<15}{(f'{ratio:.2f}' if ratio else '-'):>6}{cells}  {v.get('within_spread', '')}")
    print(f"fastest within the seed spread: {verdict['fastest_within_spread']}")


def markdown_table(data: dict) -> str:
    """The README table: step cost and mean ± half-spread accuracies per candidate, from a results JSON."""
    ratios = step_ratios()
    summary = summarize(data["rows"])
    verdict = judge(summary, ratios)["candidates"]
    keys = [f"{m}@{r:g}" for m, r in METRICS]
    head = ["schedule", "step cost", "seeds", "dense", "SVD 70%", "SVD 80%", "SVD+bn 70%", "SVD+bn 80%", "kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cand, metrics in sorted(summary.items(), key=lambda item: list(CANDIDATES).index(item[0])):
        ratio = ratios.get(cand)
        seeds = min(m["seeds"] for m in metrics.values())
        cells = [
            f"{metrics[k]['mean']:.2f} ± {metrics[k]['spread'] / 2:.2f}"
            if k in metrics and seeds > 1
            else (f"{metrics[k]['mean']:.2f}" if k in metrics else "-")
            for k in keys
        ]
        ok = (
            "reference"
            if cand == "every-step"
            else {True: "yes", False: "no", None: "1 seed"}[verdict.get(cand, {}).get("within_spread")]
        )
        lines.append(f"| {cand} | {f'{ratio:.3f}x' if ratio else '-'} | {seeds} | " + " | ".join(cells) + f" | {ok} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="candidates (default: all but every-step)")
    p.add_argument("--train-reference", action="store_true", help="train every-step here instead of reading it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--markdown", action="store_true", help="print the README table from --out and stop")
    args = p.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(args.out.read_text())))
        return
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows: list[dict] = [r for r in old.get("rows", []) if r["candidate"] != "every-step" or "source" not in r]
    if not args.train_reference:
        rows = [r for r in rows if r["candidate"] != "every-step"] + reference_rows()
    done = {(r["candidate"], r["seed"]) for r in rows}
    ds = load_dataset(args.data)
    meta = data_provenance(
        ds,
        args.data,
        split="test",
        threads=args.threads,
        command="benchmarks/bench_nuclear_schedule.py",
        settings={**TRAIN, "weight": WEIGHT, "calibration_images": IMAGES},
        candidates=CANDIDATES,
    )
    names = args.only or [c for c in CANDIDATES if c != "every-step" or args.train_reference]
    start = time.perf_counter()

    def save() -> dict:
        summary = summarize(rows)
        verdict = judge(summary, step_ratios())
        extra = {"wall_s": old.get("wall_s", 0) + time.perf_counter() - start, "loadavg_end": os.getloadavg()}
        write_json(args.out, {**meta, **extra, "rows": rows, "summary": summary, "verdict": verdict})
        return verdict

    for name in names:  # candidate-major: both seeds of the first candidates before the last ones
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            rows.extend(train_and_measure(name, seed, ds, args.data, args.threads))
            save()
    verdict = save()
    print_table(summarize(rows), verdict)
    print(f"wrote {rel(args.out)}")


if __name__ == "__main__":
    main()

"""Results rows -> ``report.md``, a summary table and PNG plots.

Everything here is computed from the rows that :func:`smoothcompress.experiment.sweep` writes
(``results.jsonl``, and ``spectra.jsonl`` for the spectra and weight pictures), so every figure traces back to a
row and every row to a command. Rows written before the penalty weight was named ``weight`` carry it as ``lam``;
both are read. A row's method is looked up in :mod:`smoothcompress.methods` to tell SVD (family ``"low-rank"``)
from pruning (``"pruning"``) in the claims. Plots are drawn on :class:`matplotlib.figure.Figure` objects, so the
pyplot state and backend of the caller (a notebook, say) are left alone.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure

from smoothcompress.files import read_jsonl
from smoothcompress.methods import get_method

__all__ = ["summarize", "select_weights", "assess_claims", "write_report", "load_results"]

BASELINE = "none"
# A claim is judged on the rates where compression bites; at 30% almost nothing loses accuracy.
CLAIM_MIN_RATE = 0.5
# Two accuracies closer than this (in points) are "on par": about the seed-to-seed spread of short CPU runs.
PAR_POINTS = 1.0
_REQUIRED = ("run", "model", "reg", "label", "rate_requested", "dataset")  # and "weight" (or its old name "lam")


class Setting(NamedTuple):
    """What a training run was, seeds pooled: rows of one setting are averaged over seeds."""

    model: str
    width: int | None
    variant: str
    reg: str
    weight: float

    @classmethod
    def of(cls, row: dict) -> Setting:
        return cls(row["model"], row.get("width"), row.get("variant", ""), row["reg"], _weight(row))

    def sort_key(self) -> tuple:
        return (self.model, self.width or 0, self.variant, self.reg != BASELINE, self.reg, self.weight)

    def context(self) -> tuple:
        """What a smooth run is compared within: the baseline of the same model, width and variant."""
        return (self.model, self.width, self.variant)

    def name(self, with_context: bool = False) -> str:
        name = "baseline" if self.reg == BASELINE else f"{self.reg} λ={self.weight:g}"
        if not with_context:
            return name
        variant = f" {self.variant}" if self.variant else ""
        return f"{self.model}-w{self.width}{variant} {name}"


def _weight(row: dict) -> float:
    """The penalty weight of a row; rows written before it was named ``weight`` call it ``lam``."""
    return float(row["weight"] if "weight" in row else row["lam"])


def _families(rows: list[dict]) -> dict[str, str | None]:
    """``{label: family}`` of the compressed rows' methods (``None`` for a method this version does not know)."""
    families = {}
    for r in rows:
        if r["label"] != "dense" and r["label"] not in families:
            try:
                families[r["label"]] = get_method(r.get("method", "")).family
            except ValueError:
                families[r["label"]] = None
    return families


def load_results(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Rows of ONE sweep: ``path`` is its folder or its ``results.jsonl``. Returns (results, spectra).

    Raises ``ValueError`` for rows this version cannot read, or rows that mix datasets or splits (a report
    compares settings on one dataset and one split).
    """
    path = Path(path)
    results = path / "results.jsonl" if path.is_dir() else path
    if not results.exists():
        raise FileNotFoundError(f"no results file at {results}; run `smoothcompress sweep CONFIG` first")
    rows = read_jsonl(results)
    if not rows:
        raise ValueError(f"{results} holds no rows")
    for i, r in enumerate(rows):
        missing = [k for k in _REQUIRED if k not in r] + ([] if "weight" in r or "lam" in r else ["weight"])
        if missing:
            raise ValueError(f"{results}: row {i + 1} lacks {', '.join(missing)}; is it a smoothcompress sweep file?")
    for key in ("dataset_sha256", "split"):
        values = {r.get(key) for r in rows}
        if len(values) > 1:
            raise ValueError(
                f"{results} mixes rows of several {key}s ({sorted(map(str, values))}); report one at a time"
            )
    return rows, read_jsonl(results.with_name("spectra.jsonl"))


def _multi(settings) -> bool:
    return len({s.context() for s in settings}) > 1


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Pool seeds: one entry per (setting, method label, rate) with accuracy mean, std, n and achieved rate."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[(Setting.of(r), r["label"], float(r["rate_requested"]))].append(r)
    out = []
    for (group, label, rate), rs in sorted(cells.items(), key=lambda kv: (kv[0][0].sort_key(), *kv[0][1:])):
        accs = [r["accuracy"] for r in rs if r.get("accuracy") is not None]
        entry = {
            "group": group,
            "label": label,
            "rate": rate,
            "n": len(accs),
            "errors": sorted({r["error"] for r in rs if "error" in r}),
        }
        if accs:
            mean, std = _mean_std(accs)
            achieved = [r["rate_achieved"] for r in rs if r.get("rate_achieved") is not None]
            entry.update(acc=mean, std=std, rate_achieved=statistics.fmean(achieved) if achieved else rate)
        out.append(entry)
    return out


def _index(summary: list[dict]) -> dict[tuple, dict]:
    """(setting, label, rate) -> summary entry (with or without an accuracy)."""
    return {(s["group"], s["label"], s["rate"]): s for s in summary}


def select_weights(rows: list[dict], label: str | None = None) -> dict[tuple, dict]:
    """Choose each regulariser's weight: the λ with the best mean of dense and SVD accuracies over all rates.

    Meant for sweeps on a validation split (``split == "val"``). The score averages the dense accuracy and the
    accuracy after SVD compression (``label``, default the first svd label present) at every swept rate, so a
    weight wins by being accurate *and* compressible, which is the trade-off the method is about. A rate out of
    reach scores 0. Weights are compared only within one model, width and variant.

    Returns ``{(model, width, variant, kind): {"weight": best, "score": ..., "scores": {weight: score}}}``.
    """
    summary = summarize(rows)
    labels = sorted(lab for lab, family in _families(rows).items() if family == "low-rank")
    label = label or (labels[0] if labels else "dense")
    rates = sorted({s["rate"] for s in summary if s["label"] == label})
    index = _index(summary)
    scores: dict[tuple, dict[float, float]] = defaultdict(dict)
    for group in sorted({s["group"] for s in summary}, key=Setting.sort_key):
        cells = [index.get((group, "dense", 0.0))] + [index.get((group, label, r)) for r in rates]
        scores[(*group.context(), group.reg)][group.weight] = statistics.fmean(
            c.get("acc", 0.0) if c else 0.0 for c in cells
        )
    return {
        key: {"weight": max(by_w, key=by_w.get), "score": max(by_w.values()), "scores": dict(sorted(by_w.items()))}
        for key, by_w in scores.items()
    }


def _compare(
    index: dict, a: Setting, la: str, b: Setting, lb: str, rates: list[float]
) -> list[tuple[float, float, str]]:
    """(rate, acc_a - acc_b in points, note) at every rate where both were tried.

    A side whose rate was out of reach loses that rate outright (difference -inf or +inf).
    """
    out = []
    for rate in rates:
        x, y = index.get((a, la, rate)), index.get((b, lb, rate))
        if not x or not y or ("acc" not in x and "acc" not in y):
            continue
        if "acc" not in x or "acc" not in y:
            out.append((rate, math.inf if "acc" in x else -math.inf, f"{lb if 'acc' in x else la} out of reach"))
            continue
        note = f"{100 * x['rate_achieved']:.1f} vs {100 * y['rate_achieved']:.1f}% removed"
        out.append((rate, 100 * (x["acc"] - y["acc"]), note))
    return out


def _verdict(diffs: list[tuple[float, float, str]]) -> str:
    """Differences within ``PAR_POINTS`` are ties: a claim is supported with at least one win and no loss."""
    if not diffs:
        return "no data"
    wins = sum(d > PAR_POINTS for _, d, _ in diffs)
    losses = sum(d < -PAR_POINTS for _, d, _ in diffs)
    if wins and not losses:
        return "supported"
    if wins:
        return "partly supported"
    return "not supported" if losses else "no difference"


def _fmt_diffs(diffs: list[tuple[float, float, str]], notes: bool = False) -> str:
    def one(r, d, note):
        value = f"{d:+.1f}" if math.isfinite(d) else f"({note})"
        return f"{100 * r:.0f}%: {value}" + (f" ({note})" if notes and math.isfinite(d) else "")

    return ", ".join(one(*x) for x in diffs)


def assess_claims(rows: list[dict]) -> list[dict]:
    """Judge the paper's four claims from the rows; each item has ``claim``, ``setting``, ``verdict``, ``evidence``.

    Rules (stated in the report): accuracies are seed means; rates >= ``CLAIM_MIN_RATE`` count; differences within
    ``PAR_POINTS`` are ties; "supported" means at least one win and no loss over those rates (claim 1: dense
    accuracy within ``PAR_POINTS`` of the baseline or better). Smooth runs are compared with the baseline of the
    same model, width and variant. Claim 4 compares equal requested rates and lists the achieved ones.
    """
    summary = summarize(rows)
    index = _index(summary)
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    rates = sorted({s["rate"] for s in summary if s["rate"] >= CLAIM_MIN_RATE})
    labels = sorted({s["label"] for s in summary if s["label"] != "dense"})
    families = _families(rows)
    svd = [lab for lab in labels if families.get(lab) == "low-rank"]
    pruning = [lab for lab in labels if families.get(lab) == "pruning"]
    multi = _multi(groups)
    claims = []

    def add(claim: str, setting: str, verdict: str, evidence: str) -> None:
        claims.append({"claim": claim, "setting": setting, "verdict": verdict, "evidence": evidence})

    for base in (g for g in groups if g.reg == BASELINE):
        smooth = [g for g in groups if g.reg != BASELINE and g.context() == base.context()]
        for g in smooth:
            name = g.name(multi)
            d, b = index.get((g, "dense", 0.0), {}), index.get((base, "dense", 0.0), {})
            if "acc" in d and "acc" in b:
                diff = 100 * (d["acc"] - b["acc"])
                add(
                    "1. smooth training matches baseline accuracy",
                    name,
                    "supported" if diff >= -PAR_POINTS else "not supported",
                    f"dense {100 * d['acc']:.2f}% vs baseline {100 * b['acc']:.2f}% ({diff:+.2f} points)",
                )
            for claim, labs in (
                ("2. smooth + SVD beats baseline + SVD", svd),
                ("3. pruning does better on smooth models", pruning),
            ):
                for lab in labs:
                    diffs = _compare(index, g, lab, base, lab, rates)
                    add(claim, f"{name}, {lab}", _verdict(diffs), "points vs baseline at rate " + _fmt_diffs(diffs))
        for g in [base, *smooth]:
            for lab_s, lab_p in itertools.product(svd, pruning):
                diffs = _compare(index, g, lab_s, g, lab_p, rates)
                add(
                    "4. SVD beats pruning at equal parameters",
                    f"{g.name(multi)}, {lab_s} vs {lab_p}",
                    _verdict(diffs),
                    "points SVD minus pruning at rate " + _fmt_diffs(diffs, notes=True),
                )
    return claims


# ------------------------------------------------------------------------------------------------------------
# Plots

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _colors(groups: list[Setting]) -> dict[Setting, str]:
    """Smooth settings get distinct colours; baselines are black (and drawn dashed)."""
    smooth = [g for g in groups if g.reg != BASELINE]
    colors = {g: _COLORS[i % len(_COLORS)] for i, g in enumerate(smooth)}
    colors.update({g: "black" for g in groups if g.reg == BASELINE})
    return colors


def _style(g: Setting) -> str:
    return "--" if g.reg == BASELINE else "-"


def plot_accuracy(summary: list[dict], path: Path) -> Path:
    """Accuracy against parameter reduction: one panel per method, one line per setting, baseline dashed."""
    labels = sorted({s["label"] for s in summary if s["label"] != "dense"})
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    colors, multi = _colors(groups), _multi(groups)
    n = max(1, len(labels))
    fig = Figure(figsize=(4.2 * n, 3.8))
    axes = fig.subplots(1, n, sharey=True, squeeze=False)
    for ax, label in zip(axes[0], labels, strict=False):
        for g in groups:
            pts = sorted(
                (100 * s["rate_achieved"], 100 * s["acc"], 100 * s["std"])
                for s in summary
                if s["group"] == g and s["label"] in (label, "dense") and "acc" in s
            )
            if not pts:
                continue
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(
                x, y, yerr=e if any(e) else None, color=colors[g], marker="o", ms=3.5, capsize=2, lw=1.4,
                ls=_style(g), label=g.name(multi),
            )  # fmt: skip
        ax.set_title(label)
        ax.set_xlabel("parameters removed (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%), no fine-tuning")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


def _spectra_runs(spectra: list[dict]) -> list[tuple[Setting, dict]]:
    """The lowest-seed run of each setting in the first model/width/variant (pictures compare like with like)."""
    runs: dict[Setting, dict] = {}
    for r in sorted(spectra, key=lambda r: r["seed"]):
        runs.setdefault(Setting.of({"model": "", **r}), r)
    ordered = sorted(runs.items(), key=lambda kv: kv[0].sort_key())
    first = ordered[0][0].context() if ordered else None
    return [(g, r) for g, r in ordered if g.context() == first]


def plot_spectra(spectra: list[dict], path: Path) -> Path | None:
    """Normalised singular values of a few layers: smooth models against the baseline (dashed)."""
    runs = _spectra_runs(spectra)
    layers = list(runs[0][1]["spectra"]) if runs else []
    if not layers:
        return None
    colors = _colors([g for g, _ in runs])
    fig = Figure(figsize=(4.2 * len(layers), 3.6))
    axes = fig.subplots(1, len(layers), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for g, r in runs:
            s = r["spectra"].get(layer)
            if s:
                ax.semilogy(range(1, len(s) + 1), s, color=colors[g], ls=_style(g), label=g.name())
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("singular value index i")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("σ_i / σ_1")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


def plot_weights(spectra: list[dict], path: Path) -> Path | None:
    """One weight slice per setting as an image (out channels x in channels, centre tap of the kernel)."""
    runs = [(g, r) for g, r in _spectra_runs(spectra) if r.get("slice")]
    if not runs:
        return None
    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig = Figure(figsize=(3.3 * cols, 3.2 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax, (g, r) in zip(axes.flat, runs, strict=False):
        w = r["slice"]
        vmax = max(abs(v) for row in w for v in row) or 1.0
        im = ax.imshow(w, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{g.name()}\nlayer {r['slice_layer']}", fontsize=9)
        ax.set_xlabel("in channel")
        ax.set_ylabel("out channel")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    tap = " (centre tap of each kernel)" if runs[0][1].get("slice_is_conv") else ""
    fig.suptitle(f"weights{tap}, first 64 x 64 entries", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return path


# ------------------------------------------------------------------------------------------------------------
# Markdown


def _pct(s: dict | None) -> str:
    if not s or "acc" not in s:
        return "—"
    return f"{100 * s['acc']:.2f} ± {100 * s['std']:.2f}" if s["n"] > 1 else f"{100 * s['acc']:.2f}"


def summary_table(summary: list[dict]) -> str:
    """Markdown table: one row per (setting, method), accuracy (%) at each rate; seeds pooled (mean ± std)."""
    index = _index(summary)
    rates = sorted({s["rate"] for s in summary if s["rate"] > 0})
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    labels = sorted({s["label"] for s in summary if s["label"] != "dense"})
    multi = _multi(groups)
    head = "| setting | method | seeds | dense | " + " | ".join(f"{100 * r:.0f}%" for r in rates) + " |"
    lines = [head, "|" + "---|" * (4 + len(rates))]
    for g in groups:
        dense = index.get((g, "dense", 0.0))
        for lab in labels:
            cells = [_pct(index.get((g, lab, r))) for r in rates]
            n = dense["n"] if dense else 0
            lines.append(f"| {g.name(multi)} | {lab} | {n} | {_pct(dense)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, ``summary.md`` and the PNG plots of a sweep into ``out_dir``; return report.md."""
    rows, spectra = load_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    table = summary_table(summary)
    (out / "summary.md").write_text(table + "\n")
    plots = {
        "Accuracy against parameter reduction": plot_accuracy(summary, out / "accuracy.png"),
        "Singular-value spectra": plot_spectra(spectra, out / "spectra.png"),
        "Weight smoothness": plot_weights(spectra, out / "weights.png"),
    }
    datasets = sorted({(r["dataset"], r.get("dataset_sha256", "")) for r in rows})
    splits = sorted({r.get("split", "test") for r in rows})
    commits = sorted({r.get("commit", "unknown") for r in rows})
    devices = sorted({r.get("device", "unknown") for r in rows})
    train_wall = sum({r["run"]: r.get("train_wall_s") or 0.0 for r in rows}.values())
    eval_wall = sum(r.get("wall_s") or 0.0 for r in rows)
    md = ["# smoothcompress report", ""]
    md += [f"- dataset: {name} (sha256 `{sha}`)" for name, sha in datasets]
    md += [
        f"- split evaluated: {', '.join(splits)}",
        f"- commits: {', '.join(commits)}",
        f"- devices: {', '.join(devices)}",
        f"- rows: {len(rows)} from {len({r['run'] for r in rows})} training runs; "
        f"training {train_wall / 60:.1f} min, compression + evaluation {eval_wall / 60:.1f} min",
        "",
        "## Accuracy (%) after compression, no fine-tuning",
        "",
        "Mean ± std over seeds. Columns are the requested fraction of all parameters removed; magnitude pruning counts "
        "non-zeros.",
        "",
        table,
        "",
    ]
    multi = _multi(s["group"] for s in summary)
    errors = [(s["group"].name(multi), s["label"], s["rate"], e) for s in summary for e in s["errors"]]
    if errors:
        md += ["Cells out of reach (shown as —):", ""]
        md += [f"- {name}, {lab} at {100 * rate:.0f}%: {e}" for name, lab, rate, e in errors]
        md.append("")
    if "val" in splits:
        md += [
            "## Weight selection (validation split)",
            "",
            "| model | regulariser | chosen λ | score | all scores (λ: score) |",
            "|---|---|---|---|---|",
        ]
        for (model, width, variant, kind), sel in select_weights(rows).items():
            scores = ", ".join(f"{weight:g}: {100 * sc:.2f}" for weight, sc in sel["scores"].items())
            where = f"{model}-w{width}" + (f" {variant}" if variant else "")
            md.append(f"| {where} | {kind} | {sel['weight']:g} | {100 * sel['score']:.2f} | {scores} |")
        md += ["", "Score: mean of the dense accuracy and the SVD accuracies at every rate (see `select_weights`).", ""]
    claims = assess_claims(rows)
    if claims:
        md += ["## The paper's claims, judged by these rows", ""]
        if "val" in splits:
            md += [
                "*Indicative only: these rows are on the validation split that chose the weights; judge the claims "
                "on a test-split sweep.*",
                "",
            ]
        md += [
            f"Rates from {100 * CLAIM_MIN_RATE:.0f}% count; differences are in accuracy points (seed means), and "
            f"differences within {PAR_POINTS:g} point are ties. 'supported': better by more than that at one rate "
            "at least and worse at none; 'partly supported': better at some rates, worse at others; 'no difference': "
            "ties only; 'not supported': worse somewhere, better nowhere. Claim 1: dense accuracy within "
            f"{PAR_POINTS:g} point of the baseline or better.",
            "",
            "| claim | setting | verdict | evidence |",
            "|---|---|---|---|",
        ]
        md += [f"| {c['claim']} | {c['setting']} | **{c['verdict']}** | {c['evidence']} |" for c in claims]
        md.append("")
    md += ["## Plots", ""]
    md += [f"### {title}\n\n![{title}]({p.name})\n" for title, p in plots.items() if p is not None]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path

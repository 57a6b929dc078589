"""Results rows -> ``report.md``, a summary table and PNG plots.

Everything here is computed from the rows that :func:`smoothcompress.experiment.sweep` writes
(``results.jsonl``, and ``spectra.jsonl`` for the spectra and weight pictures), so every figure traces back to a
row and every row to a command. Rows written before the penalty weight was named ``weight`` carry it as ``lam``;
both are read. A row's method is looked up in :mod:`smoothcompress.methods` to tell SVD (family ``"low-rank"``)
from pruning (``"pruning"``) in the claims, and plain SVD (``"svd"``) from the SVD methods that use calibration
data (``"svd+bn"``, ``"svd-data"``, ``"svd-data+bn"``). Plots are drawn on :class:`matplotlib.figure.Figure`
objects, so the pyplot state and backend of the caller (a notebook, say) are left alone.

Rows are read by :mod:`smoothcompress.results` (a sharded sweep whole, from its folder, its shards merged).
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from matplotlib.figure import Figure

from smoothcompress.methods import get_method
from smoothcompress.results import load_results, missing_shards, shards_note

__all__ = [
    "summarize",
    "select_weights",
    "frontier",
    "assess_claims",
    "write_report",
    "load_results",
    "missing_shards",
]

BASELINE = "none"
# A claim is judged on the rates where compression bites; at 30% almost nothing loses accuracy.
CLAIM_MIN_RATE = 0.5
# Two accuracies closer than this (in points) are "on par": about the seed-to-seed spread of short CPU runs.
PAR_POINTS = 1.0
# A weight is chosen on its accuracy after SVD at these rates: where compression bites and smoothness pays.
SELECT_RATES = (0.7, 0.8)
# ... among the weights whose dense accuracy is at most this far (1 point) below the baseline's.
DENSE_TOLERANCE = 0.01
# The frontier plot: dense accuracy against the accuracy at this rate.
FRONTIER_RATE = 0.8


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

    def _parts(self) -> tuple[str, str]:
        """The variant split into its training part and its penalty options (``reg_*`` keys of a grid entry)."""
        parts = [p for p in self.variant.split(",") if p]
        options = [p for p in parts if p.startswith("reg_")]
        return ",".join(p for p in parts if p not in options), ",".join(options)

    def context(self) -> tuple:
        """What a smooth run is compared within: the baseline of the same model, width and training variant.

        A penalty's own options (``reg_refresh=10``, ``reg_axes=out``) are part of the penalty, not of the
        context: a run with them is compared with the same baseline as one without."""
        return (self.model, self.width, self._parts()[0])

    def context_name(self) -> str:
        """The model, width and training variant, e.g. ``"mlp-w32 lr=0.2"``."""
        variant = self._parts()[0]
        return f"{self.model}-w{self.width}" + (f" {variant}" if variant else "")

    def penalty(self) -> str:
        """The penalty with its own options, without λ: ``"nuclear"``, ``"second [reg_axes=out]"``."""
        options = self._parts()[1]
        return self.reg + (f" [{options}]" if options else "")

    def name(self, with_context: bool = False) -> str:
        """E.g. ``"baseline"``, ``"nuclear λ=0.002"``, ``"second λ=0.001 [reg_axes=out]"``."""
        options = self._parts()[1]
        name = "baseline" if self.reg == BASELINE else f"{self.reg} λ={self.weight:g}"
        name += f" [{options}]" if options else ""
        return f"{self.context_name()} {name}" if with_context else name


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


def _acc(index: dict, group: Setting, label: str | None, rate: float) -> float | None:
    """Seed-mean accuracy of a cell; ``None`` when it was not run or was out of reach."""
    cell = index.get((group, label, rate))
    return cell.get("acc") if cell else None


def _score(index: dict, group: Setting, label: str | None, rates: Sequence[float]) -> float | None:
    """Mean accuracy of a setting after ``label`` over ``rates``; a cell out of reach scores 0; ``None`` when a
    cell has not run (yet): a λ is never judged on cells a sweep still owes."""
    if any((group, label, r) not in index for r in rates):
        return None
    return statistics.fmean(_acc(index, group, label, r) or 0.0 for r in rates)


def _svd_labels(rows: list[dict]) -> tuple[list[str], list[str]]:
    """Labels of the rows' plain SVD methods and of their SVD methods that use calibration data (``svd-data``...)."""
    plain, data = set(), set()
    for label, name in {(r["label"], r.get("method", "")) for r in rows if r["label"] != "dense"}:
        try:
            method = get_method(name)
        except ValueError:
            continue
        if method.family == "low-rank":
            (data if method.uses_data() else plain).add(label)
    return sorted(plain), sorted(data)


def _baseline_of(group: Setting, baselines: dict[tuple, Setting]) -> Setting | None:
    """The baseline a setting is held to: the one of its model, width and variant, else of its model and width."""
    return baselines.get(group.context()) or baselines.get((group.model, group.width, ""))


def select_weights(
    rows: list[dict],
    label: str | None = None,
    *,
    rates: Sequence[float] = SELECT_RATES,
    tolerance: float = DENSE_TOLERANCE,
) -> dict[tuple, dict]:
    """Choose each penalty's weight on a validation split: the best λ after SVD that keeps dense accuracy.

    Per model, width, variant and penalty kind, the chosen λ maximises the seed-mean accuracy after plain SVD
    (``label``, default the first label of method ``"svd"``) averaged over ``rates`` (70% and 80% fewer
    parameters; a cell out of reach scores 0; rates not swept are left out), among the λ whose seed-mean dense
    accuracy is at least the baseline's minus ``tolerance`` (1 point). The baseline (kind ``"none"``) is the one
    of the same model, width and variant, else of the same model and width. When no λ meets the constraint (or
    no SVD rows exist at ``rates``), the λ with the best dense accuracy is chosen and the choice's note says so;
    without a baseline, dense accuracy is not constrained. Each SVD method that uses calibration data
    (``svd+bn``, ``svd-data``, ``svd-data+bn``) present in the rows gets its own choice by the same rule.

    Parameters
    ----------
    rows : list of dict
        Results rows, all on the validation split (``split == "val"``).
    label : str, optional
        The SVD label to choose on.
    rates, tolerance
        The rates averaged over and the dense-accuracy tolerance (a fraction: 0.01 is one point).

    Returns
    -------
    dict
        ``{(model, width, variant, kind): choice}`` for every penalty kind but the baseline. A choice is
        ``{"label", "weight", "score", "scores": {weight: score}, "dense": {weight: dense accuracy},
        "baseline_dense", "feasible", "note", "data_aware": {label: choice}}``; ``feasible`` is whether a λ met
        the constraint, ``note`` is ``""`` or why the rule fell back.

    Raises
    ------
    ValueError
        When rows are not on the validation split: choosing weights on the test split would overstate them.
    """
    test = sorted({str(r.get("split", "test")) for r in rows} - {"val"})
    if test:
        raise ValueError(
            f"select_weights chooses on the validation split, but rows are on the {', '.join(test)} split; "
            "sweep with [train] val_fraction > 0 (as the cifar10-cpu-search preset does)"
        )
    summary = summarize(rows)
    index = _index(summary)
    plain, data = _svd_labels(rows)
    label = label or (plain[0] if plain else None)
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    baselines = {g.context(): g for g in groups if g.reg == BASELINE}
    kinds: dict[tuple, list[Setting]] = defaultdict(list)
    for g in groups:
        if g.reg != BASELINE:  # a penalty with its own options (reg_axes=out, ...) is a penalty of its own
            kinds[(*g.context(), g.penalty())].append(g)
    choices = {}
    for key, candidates in kinds.items():
        base = _baseline_of(candidates[0], baselines)
        base_dense = _acc(index, base, "dense", 0.0) if base else None
        choice = _choose(index, candidates, label, base_dense, rates, tolerance)
        choice["data_aware"] = {lab: _choose(index, candidates, lab, base_dense, rates, tolerance) for lab in data}
        choices[key] = choice
    return choices


def _choose(
    index: dict,
    candidates: list[Setting],
    label: str | None,
    baseline: float | None,
    rates: Sequence[float],
    tolerance: float,
) -> dict:
    """The rule of :func:`select_weights` for one penalty kind and one SVD label."""
    dense = {g.weight: _acc(index, g, "dense", 0.0) for g in candidates}
    swept = [r for r in rates if any((g, label, r) in index for g in candidates)]
    scores = {g.weight: _score(index, g, label, swept) for g in candidates} if swept else {}
    floor = -math.inf if baseline is None else baseline - tolerance - 1e-9  # 1e-9: float noise is no violation
    feasible = [w for w, acc in dense.items() if acc is not None and acc >= floor]
    if not swept:
        note = f"no {label or 'SVD'} rows at {_pcts(rates)}: chose the most accurate dense λ"
    elif not feasible:
        note = (
            f"no λ keeps dense accuracy within {100 * tolerance:g} point of the baseline's {100 * baseline:.2f}%: "
            "chose the most accurate dense λ"
        )
    else:
        note = "" if baseline is not None else "no baseline rows: dense accuracy not constrained"
    scored = [w for w in feasible if scores.get(w) is not None]
    pending = [w for w in feasible if swept and scores.get(w) is None]
    if pending:  # cells a sweep (or a shard) has not written yet: never read as zeros
        note = (
            (note + "; " if note else "") + "not scored yet (cells missing): λ " + ", ".join(f"{w:g}" for w in pending)
        )
    if swept and scored:
        weight = max(scored, key=scores.__getitem__)
    else:
        weight = max(dense, key=lambda w: -math.inf if dense[w] is None else dense[w])
    return {
        "label": label,
        "weight": weight,
        "score": scores.get(weight),
        "scores": dict(sorted(scores.items())),
        "dense": dict(sorted(dense.items())),
        "baseline_dense": baseline,
        "feasible": bool(feasible),
        "note": note,
    }


def _pcts(rates: Sequence[float]) -> str:
    """``"70/80%"``."""
    return "/".join(f"{100 * r:.0f}" for r in rates) + "%"


def frontier(rows: list[dict], rates: Sequence[float] = SELECT_RATES) -> list[dict]:
    """The λ frontier: dense accuracy against accuracy after SVD, per penalty and weight.

    Per setting (model, width, variant, penalty, λ; seeds pooled): the dense accuracy and the accuracy after plain
    SVD and after the best SVD method that uses calibration data, at ``rates``. Plain SVD is the first label of
    method ``"svd"``; a setting's data-aware label is the one with the best mean accuracy over ``rates`` (out of
    reach: 0), ``None`` when the rows have none.

    Returns one entry per setting, in report order: ``{"group": Setting, "dense": summary entry or None,
    "svd_label": str or None, "svd": {rate: summary entry or None}, "data_label": str or None, "data": {rate:
    summary entry or None}}``. A summary entry holds ``acc``, ``std`` and ``n`` (see :func:`summarize`).
    """
    summary = summarize(rows)
    index = _index(summary)
    plain, data = _svd_labels(rows)
    svd = plain[0] if plain else None
    entries = []
    for g in sorted({s["group"] for s in summary}, key=Setting.sort_key):
        tried = [lab for lab in data if any((g, lab, r) in index for r in rates)]
        best = max(tried, key=lambda lab: _score(index, g, lab, rates) or -1.0, default=None)
        entries.append(
            {
                "group": g,
                "dense": index.get((g, "dense", 0.0)),
                "svd_label": svd,
                "svd": {r: index.get((g, svd, r)) for r in rates},
                "data_label": best,
                "data": {r: index.get((g, best, r)) for r in rates},
            }
        )
    return entries


def _has_frontier(entries: list[dict]) -> bool:
    """Whether some penalty kind was trained at more than one weight (within one model, width and variant)."""
    weights = defaultdict(set)
    for e in entries:
        g = e["group"]
        if g.reg != BASELINE:
            weights[(*g.context(), g.reg)].add(g.weight)
    return any(len(ws) > 1 for ws in weights.values())


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


_MARKERS = "osD^v<>ph"


def plot_frontier(entries: list[dict], path: Path, rate: float = FRONTIER_RATE) -> Path | None:
    """Dense accuracy (x) against accuracy at ``rate`` (y): plain SVD, and the best data-aware SVD if any.

    One point per setting of :func:`frontier` (seeds pooled, error bars: std over seeds), one line per penalty
    kind through its weights (each point labelled with its λ), the baseline a black star, and a dotted line one
    tolerance (``DENSE_TOLERANCE``) below the baseline's dense accuracy: the weight selection's constraint.
    Returns ``None`` (and writes nothing) when no setting has both accuracies.
    """
    svd = entries[0]["svd_label"] if entries else None
    panels = [("svd", f"plain SVD ({svd})")] if svd else []
    if any(e["data_label"] for e in entries):
        panels.append(("data", "best data-aware SVD of each point (see the table)"))
    if not panels:
        return None
    groups = [e["group"] for e in entries]
    contexts = list(dict.fromkeys(g.context() for g in groups))
    kinds = list(dict.fromkeys(g.penalty() for g in groups if g.reg != BASELINE))  # options make a penalty of its own
    colors = {k: _COLORS[i % len(_COLORS)] for i, k in enumerate(kinds)} | {BASELINE: "black"}
    multi = _multi(groups)
    fig = Figure(figsize=(5.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)
    drawn = False
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        series: dict[tuple, list] = defaultdict(list)  # (context, kind) -> points, in weight order
        for e in entries:
            d, c = e["dense"] or {}, e[key].get(rate) or {}
            if "acc" in d and "acc" in c:
                series[(e["group"].context(), e["group"].penalty())].append((e["group"], d, c))
        for (context, kind), pts in series.items():
            x, y = [100 * d["acc"] for _, d, _ in pts], [100 * c["acc"] for _, _, c in pts]
            xerr, yerr = [100 * d["std"] for _, d, _ in pts], [100 * c["std"] for _, _, c in pts]
            where = f" ({pts[0][0].context_name()})" if multi else ""
            baseline = kind == BASELINE
            ax.errorbar(
                x, y, xerr=xerr if any(xerr) else None, yerr=yerr if any(yerr) else None, color=colors[kind],
                marker="*" if baseline else _MARKERS[contexts.index(context) % len(_MARKERS)],
                ms=12 if baseline else 5, lw=1.2, capsize=2, ls="none" if baseline else "-",
                label=("baseline" if baseline else kind) + where, zorder=3 if baseline else 2,
            )  # fmt: skip
            if baseline:
                ax.axvline(x[0] - 100 * DENSE_TOLERANCE, color="grey", ls=":", lw=1)
            else:
                for (g, _, _), xi, yi in zip(pts, x, y, strict=True):
                    ax.annotate(f"{g.weight:g}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
            drawn = True
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"dense accuracy (%); dotted: baseline - {100 * DENSE_TOLERANCE:g} point")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="best")
    if not drawn:
        return None
    axes[0][0].set_ylabel(f"accuracy at {100 * rate:.0f}% fewer parameters (%)")
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


def frontier_table(entries: list[dict], rates: Sequence[float] = SELECT_RATES) -> str:
    """Markdown table of :func:`frontier`: one row per setting, accuracies (%) as mean ± std over seeds."""
    groups = [e["group"] for e in entries]
    multi, variants = _multi(groups), any(g.variant for g in groups)
    data = any(e["data_label"] for e in entries)
    head = (["model"] if multi else []) + ["penalty", "λ"] + (["variant"] if variants else []) + ["seeds", "dense"]
    head += [f"SVD {100 * r:.0f}%" for r in rates]
    head += (["data-aware SVD"] + [f"{100 * r:.0f}%" for r in rates]) if data else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        g = e["group"]
        cells = ([f"{g.model}-w{g.width}"] if multi else []) + (
            ["baseline", "—"] if g.reg == BASELINE else [g.reg, f"{g.weight:g}"]
        )
        cells += ([g.variant or "—"] if variants else []) + [str(e["dense"]["n"] if e["dense"] else 0)]
        cells += [_pct(e["dense"])] + [_pct(e["svd"][r]) for r in rates]
        cells += ([e["data_label"] or "—"] + [_pct(e["data"][r]) for r in rates]) if data else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _selection_lines(rows: list[dict]) -> list[str]:
    """The report's weight-selection section (validation split): one table row per penalty and SVD method."""
    md = [
        "## Weight selection (validation split)",
        "",
        f"Per model and penalty, the chosen λ has the best mean accuracy after SVD at {_pcts(SELECT_RATES)} fewer "
        f"parameters among the λ whose dense accuracy is within {100 * DENSE_TOLERANCE:g} point of the "
        "baseline's (seed means; `select_weights`); when none is, the most accurate dense λ is chosen. Each SVD "
        "method that uses calibration data chooses on its own accuracies.",
        "",
        f"| model | penalty | chosen λ | method | dense (baseline) | score {_pcts(SELECT_RATES)} "
        "| all λ: dense / score | note |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.2f}"

    for (model, width, variant, kind), sel in select_weights(rows).items():
        where = Setting(model, width, variant, kind, 0.0).context_name()
        for c in [sel, *sel["data_aware"].values()]:
            dense = f"{pct(c['dense'][c['weight']])} ({pct(c['baseline_dense'])})"
            every = ", ".join(f"{w:g}: {pct(d)} / {pct(c['scores'].get(w))}" for w, d in c["dense"].items())
            md.append(
                f"| {where} | {kind} | {c['weight']:g} | {c['label'] or '—'} | {dense} | {pct(c['score'])} "
                f"| {every} | {c['note']} |"
            )
    return [*md, ""]


def write_report(results: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, ``summary.md`` and the PNG plots of a sweep into ``out_dir``; return report.md.

    ``results`` is what :func:`load_results` reads: a sweep folder (its shards merged), a results file, or
    several. When some penalty was trained at more than one weight, the report has a frontier section (table
    and ``frontier.png``); on a validation split, a weight-selection section (:func:`select_weights`).
    """
    rows, spectra = load_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    table = summary_table(summary)
    (out / "summary.md").write_text(table + "\n")
    entries = frontier(rows)
    has_frontier = _has_frontier(entries)
    plots = {
        "Accuracy against parameter reduction": plot_accuracy(summary, out / "accuracy.png"),
        "The λ frontier": plot_frontier(entries, out / "frontier.png") if has_frontier else None,
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
    fingerprints = sorted({r["sweep_fingerprint"] for r in rows if r.get("sweep_fingerprint")})
    md += [
        f"- split evaluated: {', '.join(splits)}",
        *([f"- sweep config fingerprint: {', '.join(f'`{f}`' for f in fingerprints)}"] if fingerprints else []),
        *([f"- {shards_note(rows)}"] if shards_note(rows) else []),
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
    if has_frontier:
        labels = sorted({e["data_label"] for e in entries if e["data_label"]})
        data = f"; data-aware SVD: per row the best of {', '.join(labels)} at {_pcts(SELECT_RATES)}" if labels else ""
        md += [
            "## The λ frontier: dense accuracy against accuracy after compression",
            "",
            f"One row per penalty and λ; mean ± std over seeds. SVD: {entries[0]['svd_label'] or '—'}{data}. "
            "`frontier.png` plots the dense accuracy against the accuracy at "
            f"{100 * FRONTIER_RATE:.0f}% fewer parameters.",
            "",
            frontier_table(entries),
            "",
        ]
    if "val" in splits:
        md += _selection_lines(rows)
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

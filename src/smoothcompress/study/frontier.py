"""The λ frontier and the weight choice: dense accuracy against accuracy after SVD, per penalty and weight.

:func:`select_weights` chooses each penalty's weight on a validation split (the best λ after SVD that keeps dense
accuracy); :func:`frontier` lists, per setting, the dense accuracy and the accuracy after SVD, which
:func:`frontier_table` and :func:`plot_frontier` show. Plots are drawn on :class:`matplotlib.figure.Figure`
objects, so the pyplot state and backend of the caller are left alone.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from smoothcompress.errors import ConfigError
from smoothcompress.methods import get_method, label_budget
from smoothcompress.study.plotstyle import COLORS, Figure, save_figure
from smoothcompress.study.summary import (
    BASELINE,
    Setting,
    format_accuracy,
    format_rates,
    index_summary,
    several_contexts,
    summarize,
)

__all__ = [
    "SELECT_RATES",
    "DENSE_TOLERANCE",
    "FRONTIER_RATE",
    "select_weights",
    "frontier",
    "frontier_table",
    "plot_frontier",
]

# A weight is chosen on its accuracy after SVD at these rates: where compression bites and smoothness pays.
SELECT_RATES = (0.7, 0.8)
# ... among the weights whose dense accuracy is at most this far (1 point) below the baseline's.
DENSE_TOLERANCE = 0.01
# The frontier plot: dense accuracy against the accuracy at this rate.
FRONTIER_RATE = 0.8


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
    """Labels of the rows' plain SVD methods and of their SVD methods that use calibration data (``svd-data``...), at
    a parameter budget."""
    plain, data = set(), set()
    for label, name in {(r["label"], r.get("method", "")) for r in rows if r["label"] != "dense"}:
        if label_budget(label) != "params":
            continue
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
        raise ConfigError(
            f"select_weights chooses on the validation split, but rows are on the {', '.join(test)} split; "
            "sweep with [train] val_fraction > 0 (as the cifar10-cpu-search preset does)"
        )
    summary = summarize(rows)
    index = index_summary(summary)
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
        note = f"no {label or 'SVD'} rows at {format_rates(rates)}: chose the most accurate dense λ"
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
    index = index_summary(summary)
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


def has_frontier(entries: list[dict]) -> bool:
    """Whether some penalty kind was trained at more than one weight (within one model, width and variant)."""
    weights = defaultdict(set)
    for e in entries:
        g = e["group"]
        if g.reg != BASELINE:
            weights[(*g.context(), g.reg)].add(g.weight)
    return any(len(ws) > 1 for ws in weights.values())


def frontier_table(entries: list[dict], rates: Sequence[float] = SELECT_RATES) -> str:
    """Markdown table of :func:`frontier`: one row per setting, accuracies (%) as mean ± std over seeds.

    The plain-SVD and data-aware columns appear only when the rows have such a method.
    """
    groups = [e["group"] for e in entries]
    multi, variants = several_contexts(groups), any(g.variant for g in groups)
    plain, data = any(e["svd_label"] for e in entries), any(e["data_label"] for e in entries)
    head = (["model"] if multi else []) + ["penalty", "λ"] + (["variant"] if variants else []) + ["seeds", "dense"]
    head += [f"SVD {100 * r:.0f}%" for r in rates] if plain else []
    head += (["data-aware SVD"] + [f"{100 * r:.0f}%" for r in rates]) if data else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        g = e["group"]
        cells = ([f"{g.model}-w{g.width}"] if multi else []) + (
            ["baseline", "—"] if g.reg == BASELINE else [g.reg, f"{g.weight:g}"]
        )
        cells += ([g.variant or "—"] if variants else []) + [str(e["dense"]["n"] if e["dense"] else 0)]
        cells += [format_accuracy(e["dense"])] + ([format_accuracy(e["svd"][r]) for r in rates] if plain else [])
        cells += ([e["data_label"] or "—"] + [format_accuracy(e["data"][r]) for r in rates]) if data else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_lines(rows: list[dict]) -> list[str]:
    """The report's weight-selection section (validation split): one table row per penalty and SVD method."""
    md = [
        "## Weight selection (validation split)",
        "",
        "Per model and penalty, the chosen λ has the best mean accuracy after SVD at "
        f"{format_rates(SELECT_RATES)} fewer parameters among the λ whose dense accuracy is within "
        f"{100 * DENSE_TOLERANCE:g} point of the baseline's (seed means; `select_weights`); when none is, the most "
        "accurate dense λ is chosen. Each SVD method that uses calibration data chooses on its own accuracies.",
        "",
        f"| model | penalty | chosen λ | method | dense (baseline) | score {format_rates(SELECT_RATES)} "
        "| all λ: dense / score | note |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.2f}"

    for (model, width, variant, kind), sel in select_weights(rows).items():
        where = Setting(model, width, variant, kind, 0.0).context_name()
        shown = [sel] if sel["label"] is not None or not sel["data_aware"] else []  # no plain SVD: its row is empty
        for c in [*shown, *sel["data_aware"].values()]:
            dense = f"{pct(c['dense'][c['weight']])} ({pct(c['baseline_dense'])})"
            every = ", ".join(f"{w:g}: {pct(d)} / {pct(c['scores'].get(w))}" for w, d in c["dense"].items())
            md.append(
                f"| {where} | {kind} | {c['weight']:g} | {c['label'] or '—'} | {dense} | {pct(c['score'])} "
                f"| {every} | {c['note']} |"
            )
    return [*md, ""]


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
    colors = {k: COLORS[i % len(COLORS)] for i, k in enumerate(kinds)} | {BASELINE: "black"}
    multi = several_contexts(groups)
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
    save_figure(fig, path)
    return path

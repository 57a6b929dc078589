"""Accuracy bars for the best smooth model, compressed: the project's targets (a gap to the dense baseline) and floors.

The bar (``TARGETS``): at 70% fewer parameters the best smooth model, compressed without any gradient step, is
at most 0.5 points below the dense, unregularized model of the same schedule; at 80% fewer, at most 2 points; at
90% fewer, at most 10 points.
"Best" ranges over every penalty and λ of a sweep and every low-rank method (plain SVD and the variants that use
calibration data, and the tensor schemes CP and Tucker); the row that wins is named, so that a reader sees which
method and weight it took. Since the bar is stated for the SVD family, the best among the matrix (SVD) schemes
alone is judged too. Pruning rows are not candidates: the targets are about the low-rank method; nor are rows at a
FLOPs budget (:func:`smoothcompress.methods.label_budget`), whose parameter count is their own. Accuracies are
seed means; the number of seeds is reported next to them, since the bar is stated for 3.

Floors (:func:`assess_floors`) are absolute bars a user sets, such as a paper's headline figure: at a rate, the
best smooth model, compressed, keeps at least a given accuracy. The candidates are the same as for the targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

from smoothcompress.methods import label_budget
from smoothcompress.study.summary import BASELINE, Setting, index_summary, method_families, summarize
from smoothcompress.tensorfactor import TENSOR_SCHEMES

__all__ = ["RATE_MATCH", "TARGETS", "assess_floors", "assess_targets", "check_floors", "floors_table", "targets_table"]

# {rate: points}: the largest drop below the dense baseline that meets the bar at that fraction of parameters
# removed. 70% is the paper's headline rate; 80% is where plain SVD of an unregularized network falls apart; 90% is
# where only a reconstruction that corrects upstream errors keeps a usable network.
TARGETS: Mapping[float, float] = {0.7: 0.5, 0.8: 2.0, 0.9: 10.0}

# A floor's rate matches a requested rate this close: half a point, the precision of a report's rate columns, so
# that "54%" finds a sweep's 0.5392.
RATE_MATCH = 0.005


def assess_targets(rows: list[dict], targets: Mapping[float, float] = TARGETS) -> list[dict]:
    """Judge a sweep's rows against ``targets``: one entry per model context (model, width, variant) and rate.

    Parameters
    ----------
    rows : list of dict
        Results rows of one sweep (``smoothcompress.study.results.load_results``), on any split; the caller says which.
    targets : mapping of float to float
        ``{rate: points}``, the largest allowed drop (in accuracy points) below the baseline's dense accuracy at
        each requested rate.

    Returns
    -------
    list of dict
        Per context and rate (contexts without baseline dense rows, or without low-rank rows at the rate from a
        penalised setting, are left out): ``{"context", "rate", "allowed", "baseline_dense", "baseline_n",
        "best_baseline": entry or None, "best": entry, "candidates", "gap", "met", "best_svd": entry or None,
        "gap_svd", "met_svd"}``; ``candidates`` is the number
        of (setting, method) cells the best was picked from: picked on the split it is reported on, the best of
        many is an optimistic figure, the more so the more candidates. An entry is ``{"setting", "label", "acc",
        "std", "n"}`` (accuracies as fractions; ``setting`` is a display name); ``gap`` is
        ``100 * (best acc - baseline dense)`` in points and ``met`` whether ``gap >= -allowed``; the ``_svd`` keys
        are the same among the matrix (SVD) schemes alone, rows of CP and Tucker left out (``None`` without such
        rows).
    """
    out = []
    for judged in _judged(rows, targets):
        if judged["baseline_dense"] is None:
            continue
        allowed = targets[judged["rate"]]
        gap = 100 * (judged["best"]["acc"] - judged["baseline_dense"])
        best_svd = judged["best_svd"]
        gap_svd = None if best_svd is None else 100 * (best_svd["acc"] - judged["baseline_dense"])
        out.append(
            {
                **judged,
                "allowed": allowed,
                "gap": gap,
                "met": _meets(gap, allowed),
                "gap_svd": gap_svd,
                "met_svd": None if gap_svd is None else _meets(gap_svd, allowed),
            }
        )
    return out


def assess_floors(rows: list[dict], floors: Mapping[float, float]) -> list[dict]:
    """Judge a sweep's rows against absolute accuracy floors: one entry per model context and rate.

    Parameters
    ----------
    rows : list of dict
        Results rows of one sweep, as for :func:`assess_targets`.
    floors : mapping of float to float
        ``{rate: accuracy}``, both fractions: the least accuracy the best smooth model, compressed to ``rate``
        fewer parameters, must keep (e.g. ``{0.7: 0.91}``, the paper's headline figure). A floor's rate stands for
        the rows' requested rate nearest to it within :data:`RATE_MATCH` (a report shows rates in whole percent).

    Returns
    -------
    list of dict
        Per context and floor with low-rank rows of a penalised setting at its rate: ``{"context", "rate" (the
        rows' rate), "floor_rate" (the floor's key), "floor", "baseline_dense" (None without baseline rows),
        "baseline_n", "best_baseline", "best", "candidates", "met", "best_svd", "met_svd"}``, the entries as in
        :func:`assess_targets`; ``met`` is whether the best's seed-mean accuracy is at least ``floor``.

    Raises
    ------
    ValueError
        A rate or floor outside (0, 1).
    """
    check_floors(floors)
    requested = sorted({float(r["rate_requested"]) for r in rows})
    at = {}  # the rows' rate -> the floor's rate that stands for it
    for rate in floors:
        near = min(requested, key=lambda r: abs(r - rate), default=None)
        if near is not None and abs(near - rate) <= RATE_MATCH + 1e-12:
            at.setdefault(near, rate)
    out = []
    for judged in _judged(rows, at):
        floor_rate, best_svd = at[judged["rate"]], judged["best_svd"]
        floor = floors[floor_rate]
        out.append(
            {
                **judged,
                "floor_rate": floor_rate,
                "floor": floor,
                "met": _meets(100 * (judged["best"]["acc"] - floor), 0.0),
                "met_svd": None if best_svd is None else _meets(100 * (best_svd["acc"] - floor), 0.0),
            }
        )
    return out


def check_floors(floors: Mapping[float, float]) -> None:
    """Raise ``ValueError`` unless every floor is a rate and an accuracy, both fractions in (0, 1)."""
    for rate, floor in floors.items():
        if not (0 < rate < 1 and 0 < floor < 1):
            raise ValueError(f"a floor is a rate and an accuracy, both fractions in (0, 1); got {rate:g}: {floor:g}")


def _judged(rows: list[dict], rates: Iterable[float]) -> Iterator[dict]:
    """Per model context (model, width, variant) and rate of ``rates``: the best smooth low-rank cell (all
    schemes, and the SVD schemes alone), the baseline's own best and its dense accuracy (None without
    baseline rows); contexts without a penalised low-rank cell at the rate are left out."""
    summary = summarize(rows)
    index = index_summary(summary)
    families = method_families(rows)
    low_rank = {lab for lab, fam in families.items() if fam == "low-rank" and label_budget(lab) == "params"}
    tensor = {r["label"] for r in rows if r.get("scheme") in TENSOR_SCHEMES}
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    for context in sorted({g.context() for g in groups}, key=str):
        members = [g for g in groups if g.context() == context]
        base = next((g for g in members if g.reg == BASELINE), None)
        dense = index.get((base, "dense", 0.0)) if base else None
        if dense is not None and dense.get("acc") is None:
            dense = None
        smooth = [g for g in members if g.reg != BASELINE]
        for rate in sorted(rates):
            candidates = _cells(index, smooth, low_rank, rate)
            if not candidates:
                continue
            yield {
                "context": members[0].context_name(),
                "rate": rate,
                "baseline_dense": None if dense is None else dense["acc"],
                "baseline_n": 0 if dense is None else dense["n"],
                "best_baseline": _best(_cells(index, [base], low_rank, rate)) if base else None,
                "best": _best(candidates),
                "candidates": len(candidates),
                "best_svd": _best(_cells(index, smooth, low_rank - tensor, rate)),
            }


def _meets(gap: float, allowed: float) -> bool:
    """Whether a gap (points) meets the bar ``-allowed``; 1e-9: float noise is no miss."""
    return gap >= -allowed - 1e-9


def _cells(index: dict, groups: list[Setting], labels: set[str], rate: float) -> list[dict]:
    """The summary cells at ``rate`` of ``groups`` after the low-rank ``labels`` that have a finite accuracy."""
    cells = [index.get((g, lab, rate)) for g in groups for lab in sorted(labels)]
    return [c for c in cells if c is not None and c.get("acc") is not None and math.isfinite(c["acc"])]


def _best(cells: list[dict]) -> dict | None:
    """The most accurate of ``cells`` as ``{"setting", "label", "acc", "std", "n"}``, or ``None`` when empty."""
    if not cells:
        return None
    c = max(cells, key=lambda c: c["acc"])
    return {"setting": c["group"].name(), "label": c["label"], "acc": c["acc"], "std": c["std"], "n": c["n"]}


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "—"
    n = entry["n"]
    spread = f" ± {100 * entry['std']:.2f}" if n > 1 else ""
    return f"{100 * entry['acc']:.2f}{spread} ({entry['setting']}, {entry['label']}; {_seeds(n)})"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def targets_table(verdicts: list[dict]) -> str:
    """A markdown table of :func:`assess_targets`' entries."""
    svd = any(v.get("best_svd") is not None and v["best_svd"] != v["best"] for v in verdicts)
    head = "| model | rate | baseline dense | best smooth, compressed | gap (points) | bar | met |"
    head += " best smooth, SVD schemes only | gap | met |" if svd else ""
    lines = [head + " baseline compressed |", "|---" * head.count("|") + "|"]
    for v in verdicts:
        line = (
            f"| {v['context']} | {100 * v['rate']:.0f}% | {100 * v['baseline_dense']:.2f} ({_seeds(v['baseline_n'])}) "
            f"| {_cell(v['best'])} | {v['gap']:+.2f} | ≥ -{v['allowed']:g} | {_met(v['met'])} |"
        )
        if svd:
            gap = "—" if v["gap_svd"] is None else f"{v['gap_svd']:+.2f}"
            line += f" {_cell(v['best_svd'])} | {gap} | {_met(v['met_svd'])} |"
        lines.append(line + f" {_cell(v['best_baseline'])} |")
    return "\n".join(lines)


def floors_table(verdicts: list[dict]) -> str:
    """A markdown table of :func:`assess_floors`' entries."""
    svd = any(v.get("best_svd") is not None and v["best_svd"] != v["best"] for v in verdicts)
    head = "| model | rate | floor | best smooth, compressed | met |"
    head += " best smooth, SVD schemes only | met |" if svd else ""
    lines = [head + " baseline compressed | baseline dense |", "|---" * (head.count("|") + 1) + "|"]
    for v in verdicts:
        line = f"| {v['context']} | {100 * v['rate']:.0f}% | ≥ {100 * v['floor']:g} | {_cell(v['best'])}"
        line += f" | {_met(v['met'])} |"
        if svd:
            line += f" {_cell(v['best_svd'])} | {_met(v['met_svd'])} |"
        dense = "—" if v["baseline_dense"] is None else f"{100 * v['baseline_dense']:.2f} ({_seeds(v['baseline_n'])})"
        lines.append(line + f" {_cell(v['best_baseline'])} | {dense} |")
    return "\n".join(lines)


def _met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"

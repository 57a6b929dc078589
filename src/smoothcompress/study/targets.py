"""The project's accuracy targets: how far the best smooth model, compressed, sits below the dense baseline.

The bar (``TARGETS``): at 70% fewer parameters the best smooth model, compressed without any gradient step, is
at most 0.5 points below the dense, unregularized model of the same schedule; at 80% fewer, at most 2 points; at
90% fewer, at most 10 points.
"Best" ranges over every penalty and λ of a sweep and every low-rank method (plain SVD and the variants that use
calibration data, and the tensor schemes CP and Tucker); the row that wins is named, so that a reader sees which
method and weight it took. Since the bar is stated for the SVD family, the best among the matrix (SVD) schemes
alone is judged too. Pruning rows are not candidates: the targets are about the low-rank method. Accuracies are
seed means; the number of seeds is reported next to them, since the bar is stated for 3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from smoothcompress.study.summary import BASELINE, Setting, index_summary, method_families, summarize
from smoothcompress.tensorfactor import TENSOR_SCHEMES

__all__ = ["TARGETS", "assess_targets", "targets_table"]

# {rate: points}: the largest drop below the dense baseline that meets the bar at that fraction of parameters
# removed. 70% is the paper's headline rate; 80% is where plain SVD of an unregularized network falls apart; 90% is
# where only a reconstruction that corrects upstream errors keeps a usable network.
TARGETS: Mapping[float, float] = {0.7: 0.5, 0.8: 2.0, 0.9: 10.0}


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
    summary = summarize(rows)
    index = index_summary(summary)
    families = method_families(rows)
    low_rank = {lab for lab, fam in families.items() if fam == "low-rank"}
    tensor = {r["label"] for r in rows if r.get("scheme") in TENSOR_SCHEMES}
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    out = []
    for context in sorted({g.context() for g in groups}, key=str):
        members = [g for g in groups if g.context() == context]
        base = next((g for g in members if g.reg == BASELINE), None)
        dense = index.get((base, "dense", 0.0)) if base else None
        if dense is None or dense.get("acc") is None:
            continue
        smooth = [g for g in members if g.reg != BASELINE]
        for rate, allowed in sorted(targets.items()):
            candidates = _cells(index, smooth, low_rank, rate)
            if not candidates:
                continue
            best = _best(candidates)
            gap = 100 * (best["acc"] - dense["acc"])
            best_svd = _best(_cells(index, smooth, low_rank - tensor, rate))
            gap_svd = None if best_svd is None else 100 * (best_svd["acc"] - dense["acc"])
            out.append(
                {
                    "context": base.context_name(),
                    "rate": rate,
                    "allowed": allowed,
                    "baseline_dense": dense["acc"],
                    "baseline_n": dense["n"],
                    "best_baseline": _best(_cells(index, [base], low_rank, rate)),
                    "best": best,
                    "candidates": len(candidates),
                    "gap": gap,
                    "met": _meets(gap, allowed),
                    "best_svd": best_svd,
                    "gap_svd": gap_svd,
                    "met_svd": None if gap_svd is None else _meets(gap_svd, allowed),
                }
            )
    return out


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


def _met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"

"""Reference rows: the same network trained small, against which a compressed model is judged at equal parameters.

Compression without fine-tuning is worth its name only if it beats simply training a smaller network for the same
schedule. A reference sweep (e.g. ``configs/cifar10-cpu-small.toml``) trains the architecture at smaller widths;
its dense rows become points ``(fraction of parameters removed, accuracy)`` measured against the dense size of the
sweep being reported (:func:`reference_points`). Every compressed cell is then compared with the reference curve,
linearly interpolated in the fraction removed, at the cell's achieved rate (:func:`against_references`); cells
outside the curve's range are not judged.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from smoothcompress.errors import ConfigError
from smoothcompress.study.summary import BASELINE, Setting

__all__ = ["reference_points", "reference_at", "against_references", "references_table"]


def reference_points(reference_rows: list[dict], params_dense: int) -> list[dict]:
    """One point per (model, width) of the reference sweep's dense rows, seeds pooled, sorted by rate.

    Parameters
    ----------
    reference_rows : list of dict
        Rows of the reference sweep (:func:`smoothcompress.study.results.load_results`); only dense rows are used.
    params_dense : int
        Parameters of the dense model of the sweep being reported: the rate of a point is ``1 - params /
        params_dense``.

    Returns
    -------
    list of dict
        ``{"model", "width", "params", "rate", "acc", "std", "n"}``, by increasing rate.

    Raises
    ------
    ValueError
        When the reference rows hold no dense row, or ``params_dense`` is not positive.
    """
    if params_dense <= 0:
        raise ConfigError(f"params_dense must be positive, got {params_dense}")
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in reference_rows:
        if r.get("label") == "dense" and r.get("accuracy") is not None:
            cells[(r["model"], r.get("width"))].append(r)
    if not cells:
        raise ConfigError("the reference rows hold no dense row with an accuracy: give the folder of a finished sweep")
    points = []
    for (model, width), rs in cells.items():
        accs = [r["accuracy"] for r in rs]
        params = rs[0]["params_dense"]
        points.append(
            {
                "model": model,
                "width": width,
                "params": params,
                "rate": 1 - params / params_dense,
                "acc": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "n": len(accs),
            }
        )
    return sorted(points, key=lambda p: p["rate"])


def reference_at(points: list[dict], rate: float) -> float | None:
    """The reference accuracy at ``rate``, linearly interpolated between the two nearest points; ``None`` outside
    the points' range (no extrapolation)."""
    for lo, hi in zip(points, points[1:], strict=False):
        if lo["rate"] <= rate <= hi["rate"]:
            t = (rate - lo["rate"]) / (hi["rate"] - lo["rate"]) if hi["rate"] > lo["rate"] else 0.0
            return lo["acc"] + t * (hi["acc"] - lo["acc"])
    if len(points) == 1 and abs(points[0]["rate"] - rate) < 1e-9:
        return points[0]["acc"]
    return None


def against_references(summary: list[dict], points: list[dict]) -> list[dict]:
    """Every compressed cell of ``summary`` with an accuracy, against the reference curve at its achieved rate.

    Returns
    -------
    list of dict
        ``{"group", "label", "rate", "rate_achieved", "acc", "reference", "margin"}`` (``margin = acc -
        reference``), only for cells whose achieved rate lies within the reference points' range.
    """
    out = []
    for s in summary:
        if s["label"] == "dense" or "acc" not in s:
            continue
        ref = reference_at(points, s["rate_achieved"])
        if ref is None:
            continue
        out.append({**{k: s[k] for k in ("group", "label", "rate", "rate_achieved", "acc")}, "reference": ref,
                    "margin": s["acc"] - ref})  # fmt: skip
    return out


def references_table(points: list[dict], comparisons: list[dict], multi: bool) -> str:
    """Markdown: the reference points, then per setting and method how many cells beat the reference."""
    lines = [
        "| trained small | params | fewer parameters | accuracy (%) | seeds |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        acc = f"{100 * p['acc']:.2f} ± {100 * p['std']:.2f}" if p["n"] > 1 else f"{100 * p['acc']:.2f}"
        lines.append(f"| {p['model']}-w{p['width']} | {p['params']:,} | {100 * p['rate']:.1f}% | {acc} | {p['n']} |")
    if not comparisons:
        return "\n".join(lines)
    by_cell: dict[tuple[Setting, str], list[dict]] = defaultdict(list)
    for c in comparisons:
        by_cell[(c["group"], c["label"])].append(c)
    lines += [
        "",
        "| setting | method | "
        + " | ".join(f"{100 * r:.0f}%" for r in sorted({c["rate"] for c in comparisons}))
        + " |",  # fmt: skip
        "|---|---|" + "---|" * len({c["rate"] for c in comparisons}),
    ]
    rates = sorted({c["rate"] for c in comparisons})
    order = sorted(by_cell, key=lambda k: (k[0].reg != BASELINE, k[0].sort_key(), k[1]))
    for group, label in order:
        cells = {c["rate"]: c for c in by_cell[(group, label)]}
        text = [f"{100 * cells[r]['margin']:+.2f}" if r in cells else "—" for r in rates]
        lines.append(f"| {group.name(multi)} | {label} | " + " | ".join(text) + " |")
    return "\n".join(lines)

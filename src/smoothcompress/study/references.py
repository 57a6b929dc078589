"""Reference rows: the network trained small, against which a compressed model is judged at equal parameters.

Compression without fine-tuning is worth its name only if it beats simply training a smaller network for the same
schedule. A reference sweep trains small networks from scratch; its dense rows become points ``(fraction of
parameters removed, accuracy)`` measured against the dense size of the sweep being reported
(:func:`reference_points`). Two kinds of small network (:data:`KINDS`):

* ``"trained small"``: the architecture at smaller widths (``configs/cifar10-cpu-small.toml``);
* ``"factorized from scratch"``: the factorized architecture that ``compress`` picks, trained from scratch
  (runs with ``lowrank_ranks``/``lowrank_rate``, ``configs/cifar10-cpu-lowrank.toml``).

Every compressed cell is compared with each kind's curve, linearly interpolated in the fraction removed, at the
cell's achieved rate (:func:`against_references`); cells outside a curve's range are not judged against it.
"""

from __future__ import annotations

import statistics
import warnings
from collections import defaultdict

from smoothcompress.errors import ConfigError
from smoothcompress.study.summary import BASELINE, Setting

__all__ = [
    "KINDS",
    "RATE_SLACK",
    "reference_kind",
    "reference_points",
    "reference_at",
    "against_references",
    "references_table",
]

RATE_SLACK = 0.005
"""How far (a fraction of parameters) outside a reference curve's ends a cell is still compared with the end."""

KINDS = ("trained small", "factorized from scratch")
"""The kinds of reference, in the order tables and plots show them."""


def reference_kind(row: dict) -> str:
    """The kind of small network a reference row was trained as: factorized when its variant sets ``lowrank_*``."""
    return KINDS[1] if "lowrank_" in str(row.get("variant", "")) else KINDS[0]


def reference_points(reference_rows: list[dict], params_dense: int) -> list[dict]:
    """One point per (model, width, variant) of the reference sweep's dense rows, seeds pooled, sorted by rate.

    Parameters
    ----------
    reference_rows : list of dict
        Rows of the reference sweep (:func:`smoothcompress.study.results.load_results`); only the dense rows of
        unpenalised runs are used (penalised runs are left out with a warning).
    params_dense : int
        Parameters of the dense model of the sweep being reported: the rate of a point is ``1 - params /
        params_dense``.

    Returns
    -------
    list of dict
        ``{"model", "width", "variant", "name", "kind", "params", "rate", "acc", "std", "n"}``, by increasing
        rate; ``name`` is e.g. ``"resnet18-w9"`` or ``"resnet18-w16 lowrank_rate=0.8"``, ``kind`` one of
        :data:`KINDS`.

    Raises
    ------
    ValueError
        When the reference rows hold no dense row of an unpenalised run, or ``params_dense`` is not positive.

    Warns
    -----
    UserWarning
        The reference rows hold penalised runs (left out).
    """
    if params_dense <= 0:
        raise ConfigError(f"params_dense must be positive, got {params_dense}")
    dense = [r for r in reference_rows if r.get("label") == "dense" and r.get("accuracy") is not None]
    penalised = {r["run"] for r in dense if r.get("reg", BASELINE) != BASELINE}
    if penalised:
        warnings.warn(
            f"the reference rows' {len(penalised)} penalised run(s) are left out ({', '.join(sorted(penalised))}): "
            "a reference is trained without a penalty",
            UserWarning,
            stacklevel=2,
        )
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in dense:
        if r["run"] not in penalised:
            cells[(r["model"], r.get("width"), str(r.get("variant", "")))].append(r)
    if not cells:
        raise ConfigError(
            "the reference rows hold no dense row of an unpenalised run with an accuracy: give the folder of a "
            "finished sweep of networks trained small without a penalty"
        )
    points = []
    for (model, width, variant), rs in cells.items():
        accs = [r["accuracy"] for r in rs]
        params = rs[0]["params_dense"]
        points.append(
            {
                "model": model,
                "width": width,
                "variant": variant,
                "name": f"{model}-w{width}" + (f" {variant}" if variant else ""),
                "kind": reference_kind(rs[0]),
                "params": params,
                "rate": 1 - params / params_dense,
                "acc": statistics.fmean(accs),
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "n": len(accs),
            }
        )
    return sorted(points, key=lambda p: p["rate"])


def reference_at(points: list[dict], rate: float, slack: float = RATE_SLACK) -> float | None:
    """The reference accuracy at ``rate``, linearly interpolated between the two nearest points (of one kind);
    ``None`` outside the points' range (no extrapolation), except that a rate within ``slack`` of the first or
    last point takes that point's accuracy (one rank step of a layer moves an achieved rate by about that much)."""
    if not points:
        return None
    for lo, hi in zip(points, points[1:], strict=False):
        if lo["rate"] <= rate <= hi["rate"]:
            t = (rate - lo["rate"]) / (hi["rate"] - lo["rate"]) if hi["rate"] > lo["rate"] else 0.0
            return lo["acc"] + t * (hi["acc"] - lo["acc"])
    for end in (points[0], points[-1]):
        if abs(end["rate"] - rate) <= slack:
            return end["acc"]
    return None


def against_references(summary: list[dict], points: list[dict]) -> list[dict]:
    """Every compressed cell of ``summary`` with an accuracy, against each kind's reference curve at its achieved
    rate.

    Returns
    -------
    list of dict
        ``{"kind", "group", "label", "rate", "rate_achieved", "acc", "reference", "margin"}`` (``margin = acc -
        reference``), per kind of reference only for cells whose achieved rate lies within its points' range.
    """
    out = []
    for kind in KINDS:
        curve = [p for p in points if p.get("kind", KINDS[0]) == kind]
        for s in summary:
            if s["label"] == "dense" or "acc" not in s:
                continue
            ref = reference_at(curve, s["rate_achieved"])
            if ref is None:
                continue
            out.append({"kind": kind, **{k: s[k] for k in ("group", "label", "rate", "rate_achieved", "acc")},
                        "reference": ref, "margin": s["acc"] - ref})  # fmt: skip
    return out


def references_table(points: list[dict], comparisons: list[dict], multi: bool) -> str:
    """Markdown: the reference points, then per kind of reference, setting and method the margin of each cell."""
    lines = [
        "| reference | network | params | fewer parameters | accuracy (%) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (KINDS.index(p.get("kind", KINDS[0])), p["rate"])):
        acc = f"{100 * p['acc']:.2f} ± {100 * p['std']:.2f}" if p["n"] > 1 else f"{100 * p['acc']:.2f}"
        name = p.get("name", f"{p['model']}-w{p['width']}")
        kind = p.get("kind", KINDS[0])
        lines.append(f"| {kind} | {name} | {p['params']:,} | {100 * p['rate']:.1f}% | {acc} | {p['n']} |")
    for kind in KINDS:
        mine = [c for c in comparisons if c.get("kind", KINDS[0]) == kind]
        if not mine:
            continue
        by_cell: dict[tuple[Setting, str], list[dict]] = defaultdict(list)
        for c in mine:
            by_cell[(c["group"], c["label"])].append(c)
        rates = sorted({c["rate"] for c in mine})
        lines += [
            "",
            f"Against the network {kind}, in points:",
            "",
            "| setting | method | " + " | ".join(f"{100 * r:.0f}%" for r in rates) + " |",
            "|---|---|" + "---|" * len(rates),
        ]
        order = sorted(by_cell, key=lambda k: (k[0].reg != BASELINE, k[0].sort_key(), k[1]))
        for group, label in order:
            cells = {c["rate"]: c for c in by_cell[(group, label)]}
            text = [f"{100 * cells[r]['margin']:+.2f}" if r in cells else "—" for r in rates]
            lines.append(f"| {group.name(multi)} | {label} | " + " | ".join(text) + " |")
    return "\n".join(lines)

"""The summary of results rows: settings, and accuracies pooled over seeds (means, stds).

A :class:`Setting` is what a training run was (model, width, variant, penalty, weight), seeds pooled;
:func:`summarize` turns the rows that :func:`smoothcompress.study.experiment.sweep` writes into one entry per setting,
method label and rate. Rows written before the penalty weight was named ``weight`` carry it as ``lam``; both are
read. A row's method is looked up in :mod:`smoothcompress.methods` to tell SVD (family ``"low-rank"``) from
pruning (``"pruning"``), and plain SVD (``"svd"``) from the SVD methods that use calibration data (``"svd+bn"``,
``"svd-data"``, ``"svd-data+bn"``). The weight choice and the λ frontier (:mod:`smoothcompress.study.frontier`), the
claims (:mod:`smoothcompress.study.claims`) and the report (:mod:`smoothcompress.study.report`) all read this summary.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

from smoothcompress.methods import get_method

__all__ = ["BASELINE", "Setting", "summarize"]

BASELINE = "none"


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


def method_families(rows: list[dict]) -> dict[str, str | None]:
    """``{label: family}`` of the compressed rows' methods (``None`` for a method this version does not know)."""
    families = {}
    for r in rows:
        if r["label"] != "dense" and r["label"] not in families:
            try:
                families[r["label"]] = get_method(r.get("method", "")).family
            except ValueError:
                families[r["label"]] = None
    return families


def several_contexts(settings) -> bool:
    """Whether the settings span more than one context (model, width, dataset, ...): tables then name it."""
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


def index_summary(summary: list[dict]) -> dict[tuple, dict]:
    """(setting, label, rate) -> summary entry (with or without an accuracy)."""
    return {(s["group"], s["label"], s["rate"]): s for s in summary}


def format_rates(rates: Sequence[float]) -> str:
    """``"70/80%"``."""
    return "/".join(f"{100 * r:.0f}" for r in rates) + "%"


def format_accuracy(s: dict | None) -> str:
    """A summary entry's accuracy in percent, ``"91.20 ± 0.31"`` (``"—"`` without one; no ± for one seed)."""
    if not s or "acc" not in s:
        return "—"
    return f"{100 * s['acc']:.2f} ± {100 * s['std']:.2f}" if s["n"] > 1 else f"{100 * s['acc']:.2f}"

"""The record of what a compression method did to a model: :class:`CompressionRecord`.

Every compressed or pruned copy carries one as ``model.sc_compression`` (:data:`COMPRESSION_ATTR`): the method
and its options, the requested and achieved rate, the parameter counts before and after, and method-specific
details. :func:`smoothcompress.lowrank.compress` and :func:`smoothcompress.pruning.prune` set it,
:func:`smoothcompress.save` writes it and :func:`smoothcompress.load` reads it back. The record knows nothing of the
method registry (:mod:`smoothcompress.methods`) beyond the row label each registered method declares
(:func:`register_label`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from smoothcompress.accounting import count_params

__all__ = ["COMPRESSION_ATTR", "CompressionRecord", "compression_record", "make_record", "register_label"]

COMPRESSION_ATTR = "sc_compression"
"""Attribute of a compressed or pruned model that holds its :class:`CompressionRecord`."""

_LABELS: dict[str, Callable[[Mapping[str, Any]], str]] = {}
"""The row label of each registered method from its options (:func:`register_label`)."""


@dataclass(frozen=True)
class CompressionRecord:
    """What a compression method did to a model; JSON-able through :meth:`to_dict` / :meth:`from_dict`."""

    method: str
    """Registry name of the method, e.g. ``"svd"`` or ``"filter"``."""
    options: dict[str, Any] = field(default_factory=dict)
    """The method's options, e.g. ``{"allocation": "global", "scheme": "channel", ...}``."""
    rate_requested: float | None = None
    """The ``rate`` asked for; ``None`` when only explicit SVD ranks were given."""
    rate_achieved: float | None = None
    """``1 - params_after / params_before``; ``None`` only in records of old files that did not store it."""
    params_before: int | None = None
    """All parameters of the model that was compressed (``None`` in records of old files)."""
    params_after: int | None = None
    """All parameters of the result, or its non-zero ones when ``nonzero`` (``None`` in records of old files)."""
    flops_requested: float | None = None
    """The FLOPs budget asked for: fraction of the dense model's FLOPs kept (svd ``flops=``); ``None`` if none."""
    flops_achieved: float | None = None
    """FLOPs of the result / FLOPs of the model on the example input; ``None`` when FLOPs were not counted."""
    latency_requested: float | None = None
    """The latency budget asked for: fraction of the dense model's measured time kept (svd ``latency=``)."""
    latency_achieved: float | None = None
    """Measured time of the result / measured time of the model, end to end in the budget's runtime (``details``
    holds the times, the speed-up, whether the budget was met, and the latency table's provenance)."""
    nonzero: bool = False
    """``params_after`` counts non-zero entries: the size of an unstructured-pruned model."""
    notes: dict[str, str] = field(default_factory=dict)
    """Why a layer was left alone, by layer name, e.g. ``{"conv0": "skipped: grouped conv (groups=4)"}``."""
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific results; svd: ``ranks`` (``{layer: [scheme, rank]}``), ``bn_pairs``, ``bn_note``, and with a
    latency budget ``latency`` (its ``summary`` is one line of text)."""

    def summary(self) -> str:
        """A few lines of text: the method, the rate, the FLOPs and latency budgets and what was achieved."""

        def asked(value: float | None) -> str:
            return "none requested" if value is None else f"{value:g} requested"

        removed = "unknown" if self.rate_achieved is None else f"{self.rate_achieved:.4f}"
        lines = [f"{self.label}: parameters removed {removed} ({asked(self.rate_requested)})"]
        if self.flops_achieved is not None:
            lines.append(f"FLOPs kept {self.flops_achieved:.4f} ({asked(self.flops_requested)})")
        latency = self.details.get("latency")
        if isinstance(latency, dict) and "summary" in latency:
            lines.append(str(latency["summary"]))
        return "\n".join(lines)

    @property
    def label(self) -> str:
        """The method's row label, e.g. ``"svd-global-channel"`` (the name alone for an unregistered method)."""
        label_of = _LABELS.get(self.method)
        if label_of is None:
            return self.method
        try:
            return label_of(self.options)
        except ValueError:
            return self.method

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CompressionRecord:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` (one line) for anything else."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("method"), str):
            raise ValueError(f"a compression record is a JSON object with a 'method' name, got {raw!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"compression record has unknown key(s) {', '.join(unknown)}")
        return cls(**{k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()})


def compression_record(model: nn.Module) -> CompressionRecord | None:
    """The :class:`CompressionRecord` a model carries (a plain dict is read by :meth:`CompressionRecord.from_dict`),
    or ``None``."""
    record = getattr(model, COMPRESSION_ATTR, None)
    if record is None or isinstance(record, CompressionRecord):
        return record
    return CompressionRecord.from_dict(record)


def make_record(
    method: str,
    model: nn.Module,
    compressed: nn.Module,
    rate: float | None,
    notes: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    nonzero: bool = False,
) -> CompressionRecord:
    """The record of ``compressed``, made from ``model`` by the method ``method`` (its name) with ``options`` at
    ``rate``, counting the parameters of both models (the non-zero ones of ``compressed`` when ``nonzero``)."""
    before, after = count_params(model), count_params(compressed, nonzero=nonzero)
    return CompressionRecord(
        method=method,
        options=dict(options or {}),
        rate_requested=rate,
        rate_achieved=1.0 - after / before if before else 0.0,
        params_before=before,
        params_after=after,
        nonzero=nonzero,
        notes=dict(notes or {}),
        details=dict(details or {}),
    )


def register_label(name: str, label: Callable[[Mapping[str, Any]], str]) -> None:
    """How records of the method ``name`` are labelled: ``label(options)`` gives the method's row label.

    :func:`smoothcompress.methods.register_method` calls it for every registered method; a record of a method
    nobody registered is labelled by its name.
    """
    _LABELS[name] = label

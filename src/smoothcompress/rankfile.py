"""A ranks file: the factorized architecture that :func:`smoothcompress.compress` picks, as portable JSON.

A ranks file holds, for one or more parameter rates, the rank of every layer that ``compress`` factorizes on a
given model (:func:`smoothcompress.plan_ranks`), with where the ranks came from. It lets the same factorized
architecture be built again on another model of the same shape, e.g. freshly initialised to be trained from
scratch (``TrainConfig.lowrank_ranks``): the reference that tells whether a smooth model compressed without
fine-tuning beats simply training the small architecture.

Format (UTF-8 JSON)::

    {"format": "smoothcompress-ranks", "version": 1,
     "allocation": "global", "scheme": "channel",
     "ranks": {"0.8": {"layer1.0.conv1": 12, ...}, ...},
     "source": {...}}

``ranks`` maps a rate, written as in ``str(float(rate))``, to ``{layer name: rank}``; layers left out stay dense.
``source`` is free-form provenance (the checkpoint's sha256, the commit, ...).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from smoothcompress.allocation import plan_ranks
from smoothcompress.errors import ConfigError, FileContentError
from smoothcompress.files import write_json

__all__ = ["RANKS_FORMAT", "plan_rank_file", "write_ranks", "read_ranks"]

RANKS_FORMAT = "smoothcompress-ranks"
_VERSION = 1


def _rate_key(rate: float) -> str:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1 or not math.isfinite(rate):
        raise ConfigError(f"a ranks file's rate must be a fraction of parameters removed in (0, 1), got {rate!r}")
    return str(float(rate))


def plan_rank_file(
    model: nn.Module, rates: list[float], allocation: str = "global", scheme: str = "channel"
) -> dict[str, dict[str, int]]:
    """``{rate key: {layer: rank}}``: the ranks ``compress(model, rate, allocation, scheme)`` picks at each rate.

    Parameters
    ----------
    model : nn.Module
        The model whose weights choose the ranks (typically a trained one).
    rates : list of float
        Fractions of all parameters removed, each in (0, 1).
    allocation, scheme : str
        As in :func:`smoothcompress.compress`; only ``scheme="channel"`` gives ranks that ``compress(ranks=...)``
        rebuilds exactly.
    """
    return {_rate_key(r): plan_ranks(model, r, allocation, scheme) for r in rates}


def write_ranks(
    path: str | os.PathLike,
    ranks: Mapping[str, Mapping[str, int]],
    *,
    allocation: str = "global",
    scheme: str = "channel",
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write a ranks file atomically (see the module docstring for the format); returns its path.

    Parameters
    ----------
    ranks : mapping
        ``{rate key: {layer: rank}}``, e.g. from :func:`plan_rank_file`.
    source : mapping, optional
        Provenance of the ranks, stored as given.
    """
    body = {
        "format": RANKS_FORMAT,
        "version": _VERSION,
        "allocation": allocation,
        "scheme": scheme,
        "ranks": {str(k): {str(n): int(r) for n, r in v.items()} for k, v in ranks.items()},
        "source": dict(source or {}),
    }
    return write_json(path, body)


def read_ranks(path: str | os.PathLike, rate: float) -> dict[str, int]:
    """``{layer: rank}`` at ``rate`` from the ranks file at ``path``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    FileContentError
        When the file is not a ranks file (not JSON, another format, a rank that is not a positive integer).
    ConfigError
        When the file holds no ranks for ``rate``; the message lists the rates it holds.
    """
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileContentError(f"{path}: not a ranks file ({type(e).__name__}: {e}); write one with write_ranks") from e
    if not isinstance(body, dict) or body.get("format") != RANKS_FORMAT or not isinstance(body.get("ranks"), dict):
        raise FileContentError(f"{path}: not a ranks file (no format {RANKS_FORMAT!r}); write one with write_ranks")
    key = _rate_key(rate)
    if key not in body["ranks"]:
        held = ", ".join(sorted(body["ranks"])) or "none"
        raise ConfigError(f"{path}: no ranks for rate {key}; the file holds rates {held}")
    ranks = body["ranks"][key]
    if not isinstance(ranks, dict):
        raise FileContentError(f"{path}: rate {key}: expected {{layer: rank}}, got {type(ranks).__name__}")
    bad = [n for n, r in ranks.items() if isinstance(r, bool) or not isinstance(r, int) or r < 1]
    if bad:
        raise FileContentError(f"{path}: rate {key}: ranks must be positive integers; bad: {', '.join(bad[:5])}")
    return dict(ranks)

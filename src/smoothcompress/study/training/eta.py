"""The time a training run still needs, predicted from its epoch rows, and spans of time as a person reads them.

The trainer's line per epoch ends with it (``... 48 img/s  5 h 12 min left``), and ``smoothcompress sweep --plan``
gives it per run, both from the epoch rows of ``metrics.jsonl`` (``seconds`` of training and ``eval_seconds`` of
evaluation per epoch).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

__all__ = ["ETA_EPOCHS", "time_left", "duration"]

ETA_EPOCHS = 3  # the epochs whose median time predicts the rest: recent, and one slow epoch (a pause) cannot lead


def time_left(history: list[dict[str, Any]], epochs: int) -> float:
    """Seconds of training still to go: the epochs left of ``epochs`` after the last row's ``epoch``, times the
    median time (``seconds`` of training plus ``eval_seconds``) of the last :data:`ETA_EPOCHS` rows of ``history``
    that record one (resumed parts included); 0 when no epoch is left or no row records a time."""
    timed = [h for h in history if h.get("seconds") is not None][-ETA_EPOCHS:]
    left = epochs - (history[-1].get("epoch", len(history)) if history else 0)
    if not timed or left <= 0:
        return 0.0
    return statistics.median(float(h["seconds"]) + float(h.get("eval_seconds") or 0.0) for h in timed) * left


def duration(seconds: float) -> str:
    """A span of time as a person reads it: ``"45 s"``, ``"12 min"``, ``"3 h 05 min"``; ``"—"`` for a span that is
    negative or not finite."""
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"

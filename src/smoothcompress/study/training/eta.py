"""The time a training run still needs, predicted from its epoch rows, and spans of time as a person reads them.

The trainer's line per epoch ends with it (``... 48 img/s  5 h 12 min left``), and ``smoothcompress sweep --plan``
gives it per run, both from the epoch rows of ``metrics.jsonl`` (``seconds`` of training and ``eval_seconds`` of
evaluation per epoch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ETA_EPOCHS", "time_left", "duration"]

ETA_EPOCHS = 3  # the epochs whose mean time predicts the rest: recent enough to follow a slowdown, several to smooth


def time_left(history: list[dict[str, Any]], epochs: int) -> float:
    """Seconds of training still to go: the epochs left of ``epochs`` times the mean time (training and evaluation)
    of the last :data:`ETA_EPOCHS` epoch rows of ``history`` (resumed parts included); 0 when none are left or
    there is no row yet."""
    recent = history[-ETA_EPOCHS:]
    if not recent or len(history) >= epochs:
        return 0.0
    mean = sum(h.get("seconds", 0.0) + h.get("eval_seconds", 0.0) for h in recent) / len(recent)
    return mean * (epochs - len(history))


def duration(seconds: float) -> str:
    """A span of time as a person reads it: ``"45 s"``, ``"12 min"``, ``"3 h 05 min"``."""
    if round(seconds) < 60:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"

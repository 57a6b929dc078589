"""Training checkpoints: one file per run folder, rewritten atomically after every epoch, loaded without pickle code.

A checkpoint (``OUT/checkpoint.pt``, format ``smoothcompress.checkpoint/1``) is a dict of ``epoch`` (epochs
completed), ``model``, ``optimizer``, ``scheduler`` and ``regularizer`` state dicts, ``rng`` (every global RNG
state), ``config`` (the run's :class:`~smoothcompress.study.training.TrainConfig` as a plain dict) and ``history`` (the
metrics rows so far). :func:`check_same_settings` guards a resume (or a reuse of a finished run) against changed
settings, and refuses a stored config with a key this version does not know.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from smoothcompress.errors import ConfigError
from smoothcompress.files import atomic_file
from smoothcompress.io import CheckpointError
from smoothcompress.study.training.config import RUNTIME_KEYS, TrainConfig, effective_schedule

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "check_same_settings",
    "settings_changes",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the checkpoint inside a run folder."""

CHECKPOINT_FORMAT = "smoothcompress.checkpoint/1"
"""The ``format`` entry of every checkpoint this version writes and reads."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the previous checkpoint or the new one, never a partial file.
    """
    with atomic_file(path) as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` with ``torch.load(weights_only=True)`` (no code execution).

    Returns
    -------
    dict
        Keys ``epoch`` (epochs completed), ``model``, ``optimizer``, ``scheduler``, ``regularizer``, ``rng``,
        ``config`` (a plain dict, in this version's keys also when an older version wrote it) and ``history``
        (the metrics rows so far).

    Raises
    ------
    CheckpointError
        If the file is truncated, corrupt, or not a smoothcompress checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt files fail in many ways (zip, pickle, EOF, storage errors): all mean the same
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Delete it to start the run over, or point to another run folder."
        ) from None
    required = {"epoch", "model", "optimizer", "scheduler", "rng", "config", "history"}
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or required - set(state):
        raise CheckpointError(f"{path} is not a smoothcompress training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def settings_changes(saved: dict[str, Any], config: TrainConfig, path: str | os.PathLike) -> list[str]:
    """Every training setting (runtime keys aside) where ``config`` differs from ``saved``, as ``"key: old -> new"``;
    ``[]`` when the run can continue or be reused under ``config``.

    ``saved`` is the config dict stored with a run (checkpoint or ``config.toml`` at ``path``). A key the saved
    config lacks (a setting added since) counts as its default: that run was trained the default's way. Penalty
    schedules compare as trained (``training.config.effective_schedule``). Raises the one-line unknown-key error
    (``ConfigError``, naming ``path``) for a key this version does not know.
    """
    defaults = TrainConfig().to_dict()
    unknown = sorted(set(saved) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{path}: unknown config key(s) {', '.join(unknown)}; valid keys are: {', '.join(sorted(defaults))}"
        )
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    saved |= effective_schedule(saved)  # compare the schedules trained with, not how they were spelled
    now = config.to_dict() | effective_schedule(config)
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if k not in RUNTIME_KEYS and saved.get(k) != now[k]]


def check_same_settings(saved: dict[str, Any], config: TrainConfig, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming every training setting where ``config`` differs from ``saved``
    (:func:`settings_changes`): continuing or reusing that run under other settings would silently mix two
    experiments."""
    changed = settings_changes(saved, config, path)
    if changed:
        raise ConfigError(
            f"{path} was written with different settings ({'; '.join(changed)}). Use the run's own config "
            f"({Path(path).parent / 'config.toml'}) or a new out folder."
        )

"""Where and how a result was produced: commit, device, versions and time, attached to every result row and
benchmark JSON. (The crash-safe file writes live in :mod:`smoothcompress.files`.)"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from smoothcompress.errors import ConfigError

__all__ = ["COMMIT_ENV", "git_commit", "device_name", "package_version", "provenance"]

COMMIT_ENV = "SMOOTHCOMPRESS_COMMIT"
"""Environment variable naming the commit of a source tree copied to another machine (a GPU machine, say) without
its ``.git`` folder or with a stale one: :func:`git_commit` returns it in place of git's answer."""


def package_version() -> str:
    """The installed version of smoothcompress (``smoothcompress.__version__``), ``"0.0.0+unknown"`` when it is
    run from a source tree without an install."""
    try:
        return version("smoothcompress")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "0.0.0+unknown"


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The commit of the code: ``$SMOOTHCOMPRESS_COMMIT`` (:data:`COMMIT_ENV`) when it is set (a tree copied to
    another machine, whose ``.git`` is missing or not the one it was copied from), else git's current commit (with
    ``+dirty`` when the tree has uncommitted changes), else ``"unknown"``.

    Raises
    ------
    ConfigError
        If ``$SMOOTHCOMPRESS_COMMIT`` is set and is not a commit id (7 to 40 hex digits, ``+dirty`` allowed).
    """
    given = os.environ.get(COMMIT_ENV, "").strip()
    if given:
        if not re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", given):
            raise ConfigError(
                f"${COMMIT_ENV}={given!r} is not a commit id: give the output of `git rev-parse HEAD` of the "
                "tree that was copied, or unset it"
            )
        return given
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | torch.device | None = None) -> str:
    """Human-readable name of the device, e.g. ``"cpu: x86_64, 2 threads"`` or ``"cuda: NVIDIA H100"``."""
    if device is None or device == "auto":
        device = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.machine()} {platform.processor() or ''}".strip() + f", {torch.get_num_threads()} threads"


def provenance(device: str | torch.device | None = None, **extra) -> dict:
    """Commit, device, versions and time stamp, plus any ``extra`` fields (dataset, sha256, seed, wall time)."""
    return {
        "commit": git_commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "smoothcompress": package_version(),
        "python": platform.python_version(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }

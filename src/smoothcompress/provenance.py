"""Where and how a result was produced (attached to every result row and benchmark JSON), and the crash-safe
file writes that results, metrics and checkpoints share: :func:`atomic_file`, :func:`write_json`,
:func:`append_jsonl`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["git_commit", "device_name", "sha256_file", "provenance", "write_json", "read_jsonl", "append_jsonl"]


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The current git commit (with ``+dirty`` when the tree has uncommitted changes), or ``"unknown"``."""
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(device: str | torch.device | None = None, **extra) -> dict:
    """Commit, device, versions and time stamp, plus any ``extra`` fields (dataset, sha256, seed, wall time)."""
    import smoothcompress

    return {
        "commit": git_commit(),
        "device": device_name(device),
        "torch": torch.__version__,
        "smoothcompress": smoothcompress.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file beside it, fsynced, that replaces it on success and is deleted on
    failure.

    A crash at any moment leaves the old file or the new one, never a partial file; processes racing to write
    the same file (DDP ranks) are harmless. The rename is made durable too, where the OS allows it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write((json.dumps(obj, indent=2, default=str) + "\n").encode())
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (from a killed run) is ignored, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line; fix or delete it") from None
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row to a JSON-lines file and fsync it, so a killed run loses at most the row in flight.

    A torn last line left by an earlier killed run (no trailing newline) is dropped first.
    """
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # torn: read the whole file only in this rare case
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())

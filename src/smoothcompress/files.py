"""Crash-safe files: atomic writes, JSON and JSON-lines rows, file digests, and an output-folder lock.

Results, metrics, checkpoints, configs, downloads and caches are all written through :func:`atomic_file`, so a
process killed at any moment leaves either the old file or the new one, never a partial one. :class:`FolderLock`
keeps two processes from writing into the same output folder at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from smoothcompress.errors import FileContentError

__all__ = [
    "atomic_file",
    "write_text",
    "write_json",
    "write_jsonl",
    "read_jsonl",
    "append_jsonl",
    "file_digest",
    "sha256_file",
    "FolderLock",
    "LOCK_NAME",
]

LOCK_NAME = ".lock"
"""File name of the lock :class:`FolderLock` holds inside the folder."""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file beside it, fsynced, that replaces it on success and is deleted on
    failure.

    Yields a binary file object. The parent folders are created. A crash at any moment leaves the old file or the
    new one, never a partial file; processes racing to write the same file (DDP ranks) are harmless. The rename
    is made durable too, where the OS allows it. The file gets the usual permissions (``0o666`` minus the umask).
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


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (:func:`atomic_file`). Returns ``path`` as a :class:`~pathlib.Path`."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write ``obj`` as indented JSON atomically (:func:`atomic_file`); values JSON cannot hold become strings.

    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_file(path) as f:
        f.write((json.dumps(obj, indent=2, default=str) + "\n").encode())
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Replace ``path`` atomically by a JSON-lines file of ``rows``, one compact JSON object per line.

    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_file(path) as f:
        f.write("".join(json.dumps(r, default=str) + "\n" for r in rows).encode())
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file (``[]`` when it does not exist).

    A torn last line (left by a killed writer: no newline, not JSON) is ignored with a ``UserWarning``; any other
    line that is not a JSON object raises :class:`~smoothcompress.errors.FileContentError` (a ``ValueError``)
    naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            if i == len(lines) - 1:
                warnings.warn(f"{path}:{i + 1}: ignored a truncated last line (left by a killed writer)", stacklevel=2)
                break
            raise FileContentError(f"{path}:{i + 1}: not a JSON line; fix or delete it") from None
        if not isinstance(row, dict):
            raise FileContentError(f"{path}:{i + 1}: a JSON {type(row).__name__}, not a row (a JSON object)")
        rows.append(row)
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


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes by any :mod:`hashlib` algorithm (``"sha256"``, ``"md5"``, ...), read in chunks.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` for an unknown algorithm.
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (the digest recorded in provenance)."""
    return file_digest(path, "sha256")


class FolderLock:
    """Hold ``folder/.lock`` while this process writes into ``folder``; use as a context manager.

    Parameters
    ----------
    folder : path
        The output folder. It is created if missing (and removed again on release if it was created here and
        is still empty).
    user : str
        What holds such locks, for the error message (``"sweep"``, ``"training run"``).

    The lock file names its owner, ``pid@host``. Acquiring raises ``FileExistsError`` with a one-line message
    when another live process holds the folder; a lock whose owner is a process of this host that no longer
    runs (a killed run) is taken over, so a killed run can always be resumed. A lock of another host's process
    is never taken over. Not re-entrant: one process locking one folder twice is refused like any other.
    """

    def __init__(self, folder: str | os.PathLike, user: str = "process") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.user = user
        self._created = False
        self._held = False

    def acquire(self) -> None:
        """Take the lock or raise ``FileExistsError`` (see the class docstring)."""
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()}@{socket.gethostname()}"
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.path.read_text().strip() if self.path.exists() else ""
                if attempt == 0 and _is_stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                self._remove_created_folder()
                raise FileExistsError(
                    f"another {self.user} ({owner or 'unknown owner'}) is writing to {self.folder}: wait for it to "
                    f"finish or pass another --out; if no such process runs any more, delete {self.path}"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._held = True
            return

    def release(self) -> None:
        """Delete the lock file (if this object holds it)."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
            self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only succeeds when empty: nothing was written
            self._created = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _is_stale(owner: str) -> bool:
    """Whether the lock owner ``pid@host`` is a process of this host that has ended."""
    pid, _, host = owner.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process (shared folder), or an unreadable lock: do not guess
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False

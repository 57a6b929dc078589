"""Results rows: reading the files a sweep writes, checking them, merging the shards of one sweep.

A sweep (:func:`smoothcompress.study.experiment.sweep`) writes one row per cell to ``results.jsonl`` and one row per run
to ``spectra.jsonl``; a sharded sweep (``smoothcompress sweep CONFIG --shard i/n``) writes them per shard, into
``out/shard-i-of-n/``. :func:`load_results` reads one sweep whole: it merges the shards' files, refuses files of
different sweep configs (each row carries the config's ``sweep_fingerprint``), and warns when a shard is missing.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from smoothcompress.errors import FileContentError
from smoothcompress.files import read_jsonl

__all__ = ["cell_key", "load_results", "missing_shards", "results_files", "shards_note"]

_REQUIRED = ("run", "model", "reg", "label", "rate_requested", "dataset")  # and "weight" (or its old name "lam")


def load_results(
    path: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[list[dict], list[dict]]:
    """Rows of ONE sweep, its shards merged. Returns (results, spectra).

    Parameters
    ----------
    path : path or sequence of paths
        The sweep folder (its ``results.jsonl`` and every ``shard-i-of-n/results.jsonl`` in it), a results file,
        or several of either. Each results file's ``spectra.jsonl`` beside it is read too.

    Raises
    ------
    FileNotFoundError
        There is no results file.
    ValueError
        Rows this version cannot read, rows that mix datasets or splits (a report compares settings on one dataset
        and one split), or files that cannot be one sweep: rows of different sweep configs (the
        ``sweep_fingerprint`` of each file's last row differs), of different shard counts, written before
        fingerprints, or one cell in two files.

    Warns
    -----
    UserWarning
        Shards are missing (see :func:`missing_shards`).
    """
    files = _results_files(path)
    per_file = [(f, _read_results(f)) for f in files]
    if len(per_file) > 1:
        _check_one_sweep(per_file)
    rows = [r for _, rs in per_file for r in rs]
    for key in ("dataset_sha256", "split"):
        values = {r.get(key) for r in rows}
        if len(values) > 1:
            where = files[0] if len(files) == 1 else f"{len(files)} results files"
            raise FileContentError(
                f"{where} mixes rows of several {key}s ({sorted(map(str, values))}); report one at a time"
            )
    gaps = missing_shards(rows)
    if gaps:
        warnings.warn(f"{shards_note(rows)}: the report covers only the shards found", UserWarning, stacklevel=2)
    return rows, [s for f in files for s in read_jsonl(f.with_name("spectra.jsonl"))]


def results_files(folder: str | os.PathLike) -> list[Path]:
    """The results files of the sweep in ``folder``: its own ``results.jsonl``, then each shard's, by (n, i).

    Shard folders without results yet are left out; ``[]`` when there are none.
    """
    folder = Path(folder)
    shards = []
    for sub in folder.glob("shard-*-of-*"):
        m = re.fullmatch(r"shard-(\d+)-of-(\d+)", sub.name)
        if m and (sub / "results.jsonl").is_file():
            shards.append(((int(m[2]), int(m[1])), sub / "results.jsonl"))
    own = [folder / "results.jsonl"] if (folder / "results.jsonl").is_file() else []
    return own + [path for _, path in sorted(shards)]


def _results_files(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Every results file that ``path`` (a sweep folder, a file, or several of either) names."""

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    files = []
    for p in map(Path, paths):
        found = results_files(p) if p.is_dir() else [p] if p.exists() else []
        if not found:
            where = p / "results.jsonl" if p.is_dir() else p
            raise FileNotFoundError(f"no results file at {where}; run `smoothcompress sweep CONFIG` first")
        files += [f for f in found if f not in files]
    return files


def _read_results(path: Path) -> list[dict]:
    """The rows of one results file, each checked to be a sweep row this version reads."""
    from smoothcompress.io import file_kind

    kind = file_kind(path)
    if kind in ("safetensors", "pytorch-pickle"):
        what = "a model file" if kind == "safetensors" else "a PyTorch pickle (a training checkpoint?)"
        raise FileContentError(f"{path} is {what}, not sweep results; give the sweep folder or its results.jsonl")
    rows = read_jsonl(path)
    if not rows:
        raise FileContentError(f"{path} holds no rows")
    for i, r in enumerate(rows):
        missing = [k for k in _REQUIRED if k not in r] + ([] if "weight" in r or "lam" in r else ["weight"])
        if missing:
            raise FileContentError(
                f"{path}: row {i + 1} lacks {', '.join(missing)}; is it a smoothcompress sweep file?"
            )
    first: dict[tuple, int] = {}
    for i, r in enumerate(rows):  # a sweep writes each cell once: a repeat would be pooled as another seed
        key = cell_key(r)
        if first.setdefault(key, i) != i:
            raise FileContentError(
                f"{path}: rows {first[key] + 1} and {i + 1} both hold run {key[0]}, {key[1]} at rate {key[2]:g}: "
                "two sweeps appended into one file? Report them apart"
            )
    return rows


def cell_key(row: dict) -> tuple[str, str, float]:
    """What identifies a cell of a sweep: the run, the method label and the requested rate."""
    return (row["run"], row["label"], float(row["rate_requested"]))


def _check_one_sweep(per_file: list[tuple[Path, list[dict]]]) -> None:
    """Refuse results files that are not shards of one sweep: see :func:`load_results`.

    A file's config is that of its last row: a sweep resumed with a grown grid appends rows of the new config.
    """
    (first, rows), *others = per_file
    for path, rs in per_file:
        if rs[-1].get("sweep_fingerprint") is None:
            raise FileContentError(
                f"{path} has no sweep fingerprint (written before sharded sweeps): report it on its own"
            )
    for path, rs in others:
        for key, what in (
            ("sweep_fingerprint", "different sweep configs (fingerprints {} and {})"),
            ("shards", "sweeps split into {} and {} shards"),
        ):
            a, b = rows[-1].get(key, 1), rs[-1].get(key, 1)
            if a != b:
                raise FileContentError(
                    f"{first} and {path} come from {what.format(a, b)}: not one sweep; report them apart, or rerun "
                    "the stale shards with one config into a new out folder"
                )
    seen: dict[tuple, Path] = {}
    for path, rs in per_file:
        for r in rs:
            key = cell_key(r)
            if seen.setdefault(key, path) != path:
                raise FileContentError(
                    f"{seen[key]} and {path} both hold run {key[0]}, {key[1]} at rate {key[2]:g}: the files overlap "
                    "(the same shard twice, or a grid changed between shards); report them apart"
                )


def _shards(rows: list[dict]) -> tuple[int, list[int]]:
    """(shard count, shards present) of the rows; rows written before sharded sweeps count as unsharded (1, [1])."""
    n = max((r.get("shards") or 1 for r in rows), default=1)
    return n, sorted({r.get("shard") or 1 for r in rows})


def missing_shards(rows: list[dict]) -> list[int]:
    """The shards (numbered from 1) of the rows' sharded sweep that no row comes from; ``[]`` when unsharded.

    The shard count is read from the rows (``shards``). A shard that has started but not finished is not missing.
    """
    n, present = _shards(rows)
    return sorted(set(range(1, n + 1)) - set(present))


def shards_note(rows: list[dict]) -> str:
    """``"shards 1, 3 of 3 (missing: 2)"`` for a sharded sweep's rows (a report's header, the missing-shard
    warning); ``""`` for an unsharded one."""
    (n, present), gaps = _shards(rows), missing_shards(rows)
    if n == 1:
        return ""
    missing = f" (missing: {', '.join(map(str, gaps))})" if gaps else ""
    return f"shards {', '.join(map(str, present))} of {n}{missing}"

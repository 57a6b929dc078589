"""What the benchmark scripts share: repository-relative paths and the provenance of a dataset-backed result."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from smoothcompress.provenance import provenance

REPO = Path(__file__).resolve().parent.parent


def rel(path: Path | str) -> str:
    """A path relative to the repository (no machine paths in results); unchanged when it cannot be."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO)
    except ValueError:
        return str(path)


def data_provenance(ds, data: str | Path, **extra) -> dict:
    """:func:`smoothcompress.provenance.provenance` on the CPU for a result on dataset ``ds`` read from ``data``:
    its name and sha256, the relative data path, the load average at the start, and ``extra`` fields."""
    return provenance(
        "cpu", dataset=ds.name, dataset_sha256=ds.sha256, data=rel(data), **extra, loadavg=os.getloadavg()
    )


def interleaved(runners: dict[str, Callable[[], object]], reps: int, warmup: int = 2) -> dict[str, dict]:
    """Time every runner in turns; per-repetition speed-up against ``"dense"``, then medians."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no variant always runs first
        for name in order:
            t = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t)
    out = {}
    for name, ts in times.items():
        ratios = [d / t for d, t in zip(times["dense"], ts, strict=True)]
        out[name] = {
            "ms": 1e3 * statistics.median(ts),
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
        }
    return out

"""What the benchmark scripts share: repository-relative paths and the provenance of a dataset-backed result."""

from __future__ import annotations

import os
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

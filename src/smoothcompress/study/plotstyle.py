"""Plot style shared by the report's plots and the frontier plot: the colour palette, and how a figure is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smoothcompress.extras import require
from smoothcompress.files import atomic_file

__all__ = ["COLORS", "DPI", "Figure", "save_figure"]

Figure = require("matplotlib.figure", "report").Figure  # one line naming the extra when it is missing

# Distinct colours for smooth settings or penalty kinds, in order; baselines are drawn black.
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

DPI = 130  # sharp enough to read every label on a page, small enough to commit


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib ``Figure`` as PNG to ``path`` atomically (a killed report leaves no partial image)."""
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path

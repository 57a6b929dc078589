"""Plot style shared by the report's plots and the frontier plot: the colour palette."""

from __future__ import annotations

__all__ = ["COLORS"]

# Distinct colours for smooth settings or penalty kinds, in order; baselines are drawn black.
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

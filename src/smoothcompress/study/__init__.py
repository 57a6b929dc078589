"""The study pipeline: data, training, sweeps and reports, which turn the core into experiments and results.

It sits above the core (``smoothcompress.<module>``: penalties, compression, pruning, accounting, files) and uses
it; the core never imports it. ``import smoothcompress.study`` loads nothing else: each submodule loads on first
use (``smoothcompress.study.data``, ``.training``, ``.experiment``, ``.plan``, ``.results``, ``.summary``,
``.report``, ``.frontier``, ``.claims``, ``.targets``, ``.references``, ``.progress``, ``.plotstyle``). The presets
of ``smoothcompress sweep`` live in ``presets/`` here.
"""

from importlib import import_module

_SUBMODULES = (
    "data",
    "training",
    "experiment",
    "results",
    "summary",
    "report",
    "frontier",
    "claims",
    "targets",
    "references",
    "progress",
    "plan",
    "plotstyle",
)
"""Submodules that ``smoothcompress.study.<name>`` imports on first use."""

__all__: list[str] = []


def __getattr__(name: str):
    """Load a submodule on first use; later uses find it in the module's namespace."""
    if name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = import_module(f"{__name__}.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})

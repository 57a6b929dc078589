"""Optional dependencies: the extras of the package, and one clear error when one is missing.

The core (penalties, compression, reconstruction, calibration on tensors, accounting, save and load) needs torch,
numpy, safetensors and tqdm only. Everything else is an extra of ``pip install 'smoothcompress[NAME]'``:

* ``onnx``: ONNX export and int8 files (onnx, onnxruntime, onnxscript);
* ``prune``: filter pruning (torch-pruning; magnitude pruning needs nothing);
* ``data``: image folders and the digits set (pillow, scikit-learn);
* ``train``: training configs and sweeps (TOML files: tomli-w, and tomli before Python 3.11);
* ``report``: reports and plots (matplotlib);
* ``hf``: Hugging Face models in the tests and guides (transformers);
* ``tensor``: the CP and Tucker schemes of :mod:`smoothcompress.tensorfactor` (tensorly);
* ``all``: every extra above.

:func:`require` imports an optional module or raises :class:`MissingExtra` naming the ``pip install`` to run.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtra", "require"]

EXTRAS: dict[str, str] = {
    "onnx": "ONNX export and int8 files",
    "prune": "filter pruning",
    "data": "image folders and the digits set",
    "train": "training configs and sweeps",
    "report": "reports and plots",
    "hf": "Hugging Face models",
    "tensor": "CP and Tucker factorization",
}
"""The extras and what each one is for."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (dotted name), which the extra ``extra`` installs.

    Raises
    ------
    MissingExtra
        One line: what needs the module and the ``pip install`` that brings it.
    ValueError
        For an ``extra`` that is not one of :data:`EXTRAS` (a bug in the caller).
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    try:
        return import_module(module)
    except ImportError as e:
        top = module.partition(".")[0]
        raise MissingExtra(
            f"the optional package {top!r} ({EXTRAS[extra]}) is not installed: pip install 'smoothcompress[{extra}]'"
        ) from e

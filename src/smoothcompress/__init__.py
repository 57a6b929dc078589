"""smoothcompress: smooth training and SVD compression of neural networks without fine-tuning.

Implements Runkel et al., "Smooth Model Compression without Fine-Tuning" (arXiv 2505.24469, 2025).

``import smoothcompress`` loads torch and the core only: models, penalties, compression, the method registry,
accounting and checkpoints (the modules ``smoothcompress.<module>``). The study pipeline, ``smoothcompress.study``
(data, training, sweeps, reports with matplotlib), and the pruning baselines (Torch-Pruning) load on first use of
one of their names (``sc.prune``, ``sc.train``, ``sc.sweep``, ...), as do the submodules ``sc.study``,
``sc.pruning``, ``sc.calibration``, ``sc.reconstruction``, ``sc.quantize`` and ``sc.onnxmodel``.
"""

from importlib import import_module

from smoothcompress.accounting import LayerTable, RateUnreachable, count_flops, count_params, layer_report
from smoothcompress.allocation import plan_compression, plan_ranks
from smoothcompress.batchnorm import find_bn_pairs
from smoothcompress.errors import ConfigError, FileContentError, SmoothcompressError
from smoothcompress.factorized import FactorizedConv2d, FactorizedLinear, spectrum
from smoothcompress.inputs import ExampleInput, as_example
from smoothcompress.io import CheckpointError, export_onnx, load, read_metadata, save
from smoothcompress.layers import LinearSpec, register_linear_like
from smoothcompress.lowrank import compress, compress_report
from smoothcompress.methods import Method, get_method, list_methods, register_method
from smoothcompress.models import create_model, list_models, register_model
from smoothcompress.provenance import package_version
from smoothcompress.record import CompressionRecord
from smoothcompress.regularize import KINDS as PENALTY_KINDS
from smoothcompress.regularize import Smoothness, normalized_penalty, penalty, roughness
from smoothcompress.selection import Selection, select_layers
from smoothcompress.tensorfactor import CPConv2d, TuckerConv2d

__version__ = package_version()

_LAZY = {
    # data
    "DataError": "study.data",
    "Dataset": "study.data",
    "Loader": "study.data",
    "load_dataset": "study.data",
    "split_validation": "study.data",
    # calibration data
    "calibrate": "calibration",
    "recalibrate_bn": "calibration",
    "reconstruct": "reconstruction",
    # int8 ONNX files (onnxruntime.quantization; calibration data)
    "quantize_onnx": "quantize",
    "read_onnx_record": "quantize",
    # ONNX files run by onnxruntime
    "OnnxModel": "onnxmodel",
    # training
    "TrainConfig": "study.training",
    "TrainResult": "study.training",
    "TrainingDiverged": "study.training",
    "train": "study.training",
    "evaluate": "study.training",
    # pruning baselines (Torch-Pruning)
    "prune": "pruning",
    "prune_report": "pruning",
    "max_prune_rate": "pruning",
    "PRUNE_METHODS": "pruning",
    # experiments (matplotlib for the report)
    "sweep": "study.experiment",
    "SweepConfig": "study.experiment",
    "write_report": "study.report",
}
"""Public names loaded on first use, and the submodule of each."""

_SUBMODULES = (
    "calibration",
    "reconstruction",
    "quantize",
    "onnxmodel",
    "pruning",
    "study",
    "cli",
)
"""Submodules that ``smoothcompress.<name>`` imports on first use."""

__all__ = [
    "__version__",
    # errors: every user error is a SmoothcompressError (a ValueError)
    "SmoothcompressError",
    "ConfigError",
    "FileContentError",
    "RateUnreachable",
    # models
    "create_model",
    "list_models",
    "register_model",
    # accounting
    "count_params",
    "count_flops",
    "layer_report",
    "LayerTable",
    # what a model takes as input (FLOPs, tracing, pruning, export, calibration batches)
    "ExampleInput",
    "as_example",
    # layer selection (include/exclude) and Linear-like layers
    "select_layers",
    "Selection",
    "register_linear_like",
    "LinearSpec",
    # compression (lowrank)
    "compress",
    "compress_report",
    "plan_compression",
    "plan_ranks",
    "spectrum",
    "find_bn_pairs",
    "FactorizedConv2d",
    "FactorizedLinear",
    "CPConv2d",
    "TuckerConv2d",
    # compression methods (registry) and their record
    "Method",
    "CompressionRecord",
    "register_method",
    "get_method",
    "list_methods",
    # persistence (io)
    "save",
    "load",
    "read_metadata",
    "export_onnx",
    "CheckpointError",
    # smoothness penalties (regularize)
    "Smoothness",
    "penalty",
    "normalized_penalty",
    "roughness",
    "PENALTY_KINDS",
    # pruning baselines (lazy)
    "prune",
    "prune_report",
    "max_prune_rate",
    "PRUNE_METHODS",
    # data (lazy)
    "DataError",
    "Dataset",
    "Loader",
    "load_dataset",
    "split_validation",
    # calibration (lazy)
    "calibrate",
    "recalibrate_bn",
    "reconstruct",
    # int8 ONNX (lazy)
    "quantize_onnx",
    "read_onnx_record",
    "OnnxModel",
    # training (lazy)
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "evaluate",
    # experiments (lazy)
    "sweep",
    "SweepConfig",
    "write_report",
]


def __getattr__(name: str):
    """Load a lazy public name (or submodule) on first use; later uses find it in the module's namespace."""
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _SUBMODULES:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})

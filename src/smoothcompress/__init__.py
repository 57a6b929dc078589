"""smoothcompress: smooth training and SVD compression of neural networks without fine-tuning.

Implements Runkel et al., "Smooth Model Compression without Fine-Tuning" (arXiv 2505.24469, 2025).
"""

from importlib.metadata import PackageNotFoundError, version

from smoothcompress.accounting import Report, count_flops, count_params, layer_report
from smoothcompress.data import DataError, Dataset, Loader, load_dataset, split_validation
from smoothcompress.experiment import SweepConfig, sweep
from smoothcompress.io import CheckpointError, export_onnx, load, read_metadata, save
from smoothcompress.lowrank import (
    FactorizedConv2d,
    FactorizedLinear,
    compress,
    compress_report,
    find_bn_pairs,
    plan_compression,
    plan_ranks,
    spectrum,
)
from smoothcompress.models import create_model, list_models, register_model
from smoothcompress.prune import PRUNE_METHODS, max_prune_rate, prune, prune_report
from smoothcompress.regularize import KINDS as PENALTY_KINDS
from smoothcompress.regularize import Smoothness, normalized_penalty, penalty, roughness
from smoothcompress.report import write_report
from smoothcompress.train import TrainConfig, TrainingDiverged, TrainResult, evaluate, train

try:
    __version__ = version("smoothcompress")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    # models
    "create_model",
    "list_models",
    "register_model",
    # accounting
    "count_params",
    "count_flops",
    "layer_report",
    "Report",
    # compression (lowrank)
    "compress",
    "compress_report",
    "plan_compression",
    "plan_ranks",
    "spectrum",
    "find_bn_pairs",
    "FactorizedConv2d",
    "FactorizedLinear",
    # persistence (io)
    "save",
    "load",
    "read_metadata",
    "export_onnx",
    "CheckpointError",
    # pruning baselines
    "prune",
    "prune_report",
    "max_prune_rate",
    "PRUNE_METHODS",
    # smoothness penalties (regularize)
    "Smoothness",
    "penalty",
    "normalized_penalty",
    "roughness",
    "PENALTY_KINDS",
    # data
    "DataError",
    "Dataset",
    "Loader",
    "load_dataset",
    "split_validation",
    # training
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "evaluate",
    # experiments
    "sweep",
    "SweepConfig",
    "write_report",
]

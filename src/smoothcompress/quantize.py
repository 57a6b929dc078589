"""int8 ONNX files of dense, compressed and pruned models, by onnxruntime's post-training quantization.

:func:`quantize_onnx` exports the float model with :func:`smoothcompress.export_onnx` to a temporary folder, runs
onnxruntime's pre-processing (``quant_pre_process``: shape inference and graph optimization, which also puts the
weights inside the file), then quantizes it with ``onnxruntime.quantization``:

``mode="static"``
    ``quantize_static`` in QDQ format, int8 weights (per output channel by default) and int8 activations whose
    ranges (MinMax) come from forward passes of onnxruntime on calibration inputs. The inputs come from
    :func:`smoothcompress.calibration.calibration_batches`: a Dataset's training split only, a Loader, an
    iterable of batches or a float tensor. No gradient step is taken. Every Conv and Linear layer (the two
    factors of a factorized one included) and the operations between them are quantized.
``mode="dynamic"``
    ``quantize_dynamic``: int8 weights of the Linear layers (ONNX ``MatMul``/``Gemm``), activations quantized on
    the fly at inference; no calibration data. Meant for Linear-only models (MLPs, transformers); Conv layers stay
    float.

The result is one self-contained ``.onnx`` file, written atomically (:func:`smoothcompress.files.atomic_file`).
Its ``metadata_props`` hold, under the key :data:`ONNX_RECORD_KEY`, a JSON object ``{"compression": <the model's
CompressionRecord as a dict, or null>, "quantization": {"mode", "per_channel", "calibration_images", "split"}}``;
:func:`read_onnx_record` reads it back.

Example
-------
>>> import smoothcompress as sc, torch
>>> model = sc.compress(sc.create_model("cnn"), 0.5)
>>> sc.quantize_onnx(model, "cnn-int8.onnx", torch.randn(256, 1, 8, 8))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smoothcompress.calibration import CalibrationData, calibration_batches, describe_source
from smoothcompress.errors import first_line
from smoothcompress.extras import require
from smoothcompress.files import atomic_file
from smoothcompress.inputs import as_batch
from smoothcompress.layers import is_linear_like
from smoothcompress.models import default_input_shape
from smoothcompress.onnxfile import export_float
from smoothcompress.record import CompressionRecord, compression_record

# one line naming the extra when onnx or onnxruntime is missing
onnx = require("onnx", "onnx")
ort_quantization = require("onnxruntime.quantization", "onnx")
quant_pre_process = require("onnxruntime.quantization.shape_inference", "onnx").quant_pre_process

__all__ = ["MODES", "ONNX_RECORD_KEY", "quantize_onnx", "read_onnx_record"]

MODES = ("static", "dynamic")
"""Values of ``mode`` in :func:`quantize_onnx`."""

ONNX_RECORD_KEY = "smoothcompress"
"""Key of the ``metadata_props`` entry that holds the JSON record of a quantized file."""

CALIBRATION_BATCH = 64
"""Inputs per onnxruntime forward pass during static calibration."""

LINEAR_OPS = ["MatMul", "Gemm"]
"""ONNX operations that Linear layers become; what dynamic mode quantizes."""


class _Batches(ort_quantization.CalibrationDataReader):
    """onnxruntime's calibration reader over batches of model inputs, as ``{"input": array}``."""

    def __init__(self, batches: Iterable[torch.Tensor]):
        self._batches: Iterator[torch.Tensor] = iter(batches)
        self.seen = 0
        """Inputs given so far."""

    def get_next(self) -> dict | None:
        x = next(self._batches, None)
        if x is None:
            return None
        self.seen += x.shape[0]
        return {"input": x.detach().to("cpu", torch.float32).contiguous().numpy()}


def _has_linear(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) or is_linear_like(m) for m in model.modules())


def _has_conv_or_linear(model: nn.Module) -> bool:
    return _has_linear(model) or any(isinstance(m, nn.Conv2d) for m in model.modules())


def _first_batch(data: CalibrationData, images: int) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    """The first calibration batch, and an iterator over all of them (that one included)."""
    batches = calibration_batches(data, images, CALIBRATION_BATCH)
    first = next(batches, None)
    if first is None:
        raise ValueError("the calibration data gave no inputs; pass at least one training image")
    if not isinstance(first, torch.Tensor) or not first.is_floating_point():
        shown = as_batch(first).describe()
        raise ValueError(f"static int8 calibration needs float tensor inputs (the graph's one input), got {shown}")

    def all_batches() -> Iterator[torch.Tensor]:
        yield first
        yield from batches

    return first, all_batches()


def _check_fits(model: nn.Module, x: torch.Tensor) -> None:
    """One forward pass of ``model`` on ``x`` (no gradient), so a mismatch is told before anything is exported."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:2])
    except (RuntimeError, ValueError, TypeError) as e:
        first = first_line(e)
        raise ValueError(
            f"calibration inputs of shape {tuple(x.shape)} do not fit the model ({first}); pass inputs of its shape"
        ) from None
    finally:
        model.train(was_training)


def quantize_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    data: CalibrationData | None = None,
    *,
    input_shape: Iterable[int] | None = None,
    images: int = 256,
    mode: str = "static",
    per_channel: bool = True,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    example_input: torch.Tensor | None = None,
) -> Path:
    """Write an int8 ONNX file of a dense, compressed or pruned model (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Any model :func:`smoothcompress.export_onnx` exports, with at least one Conv or Linear layer (static) or
        one Linear layer (dynamic). It is not modified; its training flag is restored.
    path : str or PathLike
        Output ``.onnx`` file, written atomically. Weights are inside the file (the protobuf limit of 2 GB
        applies).
    data : Dataset, Loader, iterable of batches or float Tensor, optional
        Calibration inputs for ``mode="static"`` (required there), read by
        :func:`smoothcompress.calibration.calibration_batches`: a Dataset's training split only. Unused (must be
        ``None``) for ``mode="dynamic"``.
    input_shape : tuple of int, optional
        Input shape with the batch dimension, e.g. ``(1, 3, 32, 32)``. Default: ``(1, *shape)`` of the first
        calibration batch, else the registry shape of a model built by :func:`smoothcompress.create_model`.
    images : int
        Number of calibration inputs (at least 1); a source with fewer gives all it has.
    mode : {"static", "dynamic"}
        Post-training quantization with calibrated activation ranges, or dynamic quantization of Linear weights.
    per_channel : bool
        One weight scale per output channel (else one per tensor).
    dynamic_batch, opset_version, example_input
        Passed to :func:`smoothcompress.export_onnx` (``example_input`` replaces ``input_shape``, e.g. int64
        token ids of a text model, dynamic mode).

    Returns
    -------
    Path
        The written file; ``onnxruntime.InferenceSession(path)`` runs it with input ``"input"`` and output
        ``"output"``, like the float export.

    Raises
    ------
    ValueError
        An unknown mode; static mode without data; data given to dynamic mode; calibration inputs that are not
        float tensors or do not fit the model; no input shape known; no layer to quantize.
    """
    path = Path(path)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "static" and data is None:
        raise ValueError("static int8 quantization needs calibration data (training images); pass data=...")
    if mode == "dynamic" and data is not None:
        raise ValueError("dynamic int8 quantization reads no calibration data; pass data=None or mode='static'")
    if mode == "static" and not _has_conv_or_linear(model):
        raise ValueError("the model has no Conv2d or Linear layer, so there is nothing to quantize to int8")
    if mode == "dynamic" and not _has_linear(model):
        raise ValueError("dynamic int8 quantization quantizes Linear layers and the model has none; use mode='static'")
    reader: _Batches | None = None
    if data is not None:
        first, batches = _first_batch(data, images)
        reader = _Batches(batches)
        _check_fits(model, first)
        if input_shape is None and example_input is None:
            input_shape = (1, *first.shape[1:])
        elif example_input is None and tuple(input_shape)[1:] != tuple(first.shape[1:]):
            raise ValueError(
                f"calibration inputs have shape {tuple(first.shape[1:])} per sample but input_shape is "
                f"{tuple(input_shape)}; pass matching ones"
            )
    if input_shape is None and example_input is None:
        input_shape = default_input_shape(model)
        if input_shape is None:
            raise ValueError("quantize_onnx needs an input_shape, e.g. (1, 3, 32, 32), for a model not built by name")
    with tempfile.TemporaryDirectory(prefix="sc-int8-") as tmp:
        float_path, prepared, quantized = Path(tmp, "float.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        export_float(
            model,
            float_path,
            input_shape,
            dynamic_batch=dynamic_batch,
            opset_version=opset_version,
            example_input=example_input,
        )
        quant_pre_process(str(float_path), str(prepared))
        if mode == "static":
            ort_quantization.quantize_static(
                str(prepared),
                str(quantized),
                reader,
                quant_format=ort_quantization.QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=ort_quantization.QuantType.QInt8,
                weight_type=ort_quantization.QuantType.QInt8,
            )
        else:
            ort_quantization.quantize_dynamic(
                str(prepared),
                str(quantized),
                op_types_to_quantize=LINEAR_OPS,
                per_channel=per_channel,
                weight_type=ort_quantization.QuantType.QInt8,
            )
        proto = onnx.load(str(quantized))
    record = {
        "compression": rec.to_dict() if (rec := compression_record(model)) else None,
        "quantization": {
            "mode": mode,
            "per_channel": bool(per_channel),
            "calibration_images": reader.seen if reader is not None else 0,
            "split": describe_source(data, images)["split"] if data is not None else None,
        },
    }
    kept = [p for p in proto.metadata_props if p.key != ONNX_RECORD_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=ONNX_RECORD_KEY, value=json.dumps(record))
    with atomic_file(path) as f:
        f.write(proto.SerializeToString())
    return path


def read_onnx_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record :func:`quantize_onnx` wrote into an ONNX file, without loading its weights.

    Parameters
    ----------
    path : str or PathLike
        An ``.onnx`` file.

    Returns
    -------
    dict or None
        ``{"compression": CompressionRecord or None, "quantization": {"mode", "per_channel", "calibration_images",
        "split"}}``; ``None`` for a file without the record (a float export, another tool's file).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not ONNX, or its record is not the JSON object described above.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own error types
        raise ValueError(f"{path} is not a readable ONNX file: {e}") from None
    raw = next((p.value for p in proto.metadata_props if p.key == ONNX_RECORD_KEY), None)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata entry {ONNX_RECORD_KEY!r} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("quantization"), dict):
        raise ValueError(f"{path}: metadata entry {ONNX_RECORD_KEY!r} has no 'quantization' object")
    compression = record.get("compression")
    return {
        "compression": CompressionRecord.from_dict(compression) if compression is not None else None,
        "quantization": record["quantization"],
    }

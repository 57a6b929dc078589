"""An ONNX file run by onnxruntime, as a torch module: what evaluates a float or int8 ONNX file like a model.

:class:`OnnxModel` opens a file written by :func:`smoothcompress.export_onnx` or
:func:`smoothcompress.quantize_onnx` (or any ONNX file with tensor inputs) in an onnxruntime ``InferenceSession`` on
the CPU provider, with every graph optimisation on. Calling it on torch tensors runs the graph and returns the
first output as a torch tensor, so :func:`smoothcompress.evaluate` and any code that calls a model on batches
evaluate the file as they evaluate the model it came from. It has no parameters and takes no gradient.

The record that :func:`smoothcompress.quantize_onnx` writes into an int8 file is read when the file is opened:
the compression record becomes ``model.sc_compression`` (as on the torch model it came from) and the quantization
settings ``model.quantization``.

Example
-------
>>> import smoothcompress as sc, torch
>>> path = sc.export_onnx(sc.create_model("cnn"), "cnn.onnx", (1, 1, 8, 8))  # doctest: +SKIP
>>> sc.OnnxModel(path)(torch.randn(4, 1, 8, 8)).shape  # doctest: +SKIP
torch.Size([4, 10])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smoothcompress.errors import ConfigError, FileContentError, first_line
from smoothcompress.extras import require
from smoothcompress.quantize import read_onnx_record
from smoothcompress.record import COMPRESSION_ATTR

ort = require("onnxruntime", "onnx")  # one line naming the extra when onnxruntime is missing

__all__ = ["ONNX_TYPES", "OnnxModel", "session_options"]

ONNX_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
"""NumPy dtype that each ONNX input type is fed as; inputs of another type are passed unconverted."""


def session_options(threads: int | None = None) -> Any:
    """onnxruntime ``SessionOptions`` with every graph optimisation on and ``threads`` intra-op threads.

    Parameters
    ----------
    threads : int, optional
        Intra-op threads (at least 1); the graph's operators then run one at a time (one inter-op thread).
        ``None``: onnxruntime's defaults (one thread per physical core).

    Raises
    ------
    ConfigError
        ``threads`` below 1.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be an integer of at least 1, or None for onnxruntime's; got {threads!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxModel(nn.Module):
    """An ONNX file run by onnxruntime on the CPU; ``model(x)`` maps torch tensors to a torch tensor.

    Parameters
    ----------
    path : str or PathLike
        An ``.onnx`` file (with its ``NAME.onnx.data`` beside it when the weights are external).
    threads : int, optional
        Intra-op threads of the session (:func:`session_options`); default: onnxruntime's.

    Attributes
    ----------
    path : Path
        The file.
    session : onnxruntime.InferenceSession
        The session that runs it.
    input_names, output_names : list of str
        The graph's inputs and outputs, in order (``["input"]`` and ``["output"]`` for the library's exports).
    quantization : dict or None
        The quantization settings of an int8 file written by :func:`smoothcompress.quantize_onnx` (``mode``,
        ``per_channel``, ``calibration_images``, ``split``); ``None`` for another file.
    sc_compression : CompressionRecord
        Set when the file's record holds one (an int8 file of a compressed or pruned model).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FileContentError
        The file is not an ONNX model onnxruntime can run (the message quotes onnxruntime's first line).
    ConfigError
        ``threads`` below 1.
    MissingExtra
        onnxruntime is not installed (the ``[onnx]`` extra).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}")
        options = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
            raise FileContentError(
                f"{self.path} is not an ONNX model onnxruntime can run ({first_line(e, 300)}); pass a file written "
                "by export_onnx or quantize_onnx"
            ) from None
        self._inputs = [(i.name, ONNX_TYPES.get(i.type)) for i in self.session.get_inputs()]
        self.input_names = [name for name, _ in self._inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        record = read_onnx_record(self.path)
        self.quantization = record["quantization"] if record is not None else None
        if record is not None and record["compression"] is not None:
            setattr(self, COMPRESSION_ATTR, record["compression"])

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, inputs={self.input_names}"

    def _feed(self, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
        """The session's input feed from positional tensors (the graph's inputs in order) and keyword tensors."""
        if len(args) > len(self._inputs):
            raise ConfigError(
                f"{self.path.name} takes {len(self._inputs)} input(s) ({', '.join(self.input_names)}), got "
                f"{len(args)} positional ones"
            )
        given = dict(zip(self.input_names, args, strict=False))
        for name, value in kwargs.items():
            if name not in self.input_names:
                inputs = ", ".join(self.input_names)
                raise ConfigError(f"{self.path.name} has no input {name!r}; its inputs are {inputs}")
            if name in given:
                raise ConfigError(f"input {name!r} of {self.path.name} is given twice")
            given[name] = value
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise ConfigError(f"{self.path.name} needs input(s) {', '.join(missing)}; pass them")
        feed = {}
        for name, dtype in self._inputs:
            value = given[name]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feed[name] = np.ascontiguousarray(array, dtype=dtype) if dtype is not None else array
        return feed

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """Run the graph on the inputs and return its first output.

        Parameters
        ----------
        *args, **kwargs : Tensor or array
            The graph's inputs, positionally in order or by name; e.g. one ``(B, C, H, W)`` float tensor for an
            image model. Floats and integers are converted to the graph's input type (``float32``, ``int64``, ...).

        Returns
        -------
        Tensor
            The first output, e.g. ``(B, num_classes)`` logits, on the CPU.

        Raises
        ------
        ConfigError
            Inputs missing, unknown or given twice, or inputs the graph refuses (wrong rank or size; the message
            quotes onnxruntime's first line).
        """
        feed = self._feed(args, kwargs)
        try:
            out = self.session.run(self.output_names[:1], feed)[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own error types
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feed.items())
            raise ConfigError(
                f"{self.path.name} cannot run on {shapes} ({first_line(e, 300)}); pass inputs of the exported shape"
            ) from None
        return torch.from_numpy(out)

"""Float ONNX files: the ``torch.export``-based exporter behind :func:`smoothcompress.export_onnx`.

:func:`export_float` writes the float graph; :func:`smoothcompress.io.export_onnx` calls it, or
:func:`smoothcompress.quantize.quantize_onnx` for an int8 file, which exports the float graph with it first.
Both build on this module, which imports neither.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from smoothcompress.errors import ConfigError, first_line
from smoothcompress.inputs import ExampleInput, as_example

__all__ = ["HARMLESS_EXPORT_MESSAGES", "ONNX_SIZE_LIMIT", "export_float"]

ONNX_SIZE_LIMIT = 2**31 - 2**24
"""Bytes of weights up to which the ONNX file holds them itself (protobuf's 2 GiB limit, less room for the graph);
a larger model's weights go to ``NAME.onnx.data`` beside it."""

HARMLESS_EXPORT_MESSAGES = (
    r"torchvision is not installed",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"You are using the legacy TorchScript-based ONNX export",
    r"Exporting a model while it is in training mode",
    r".*torch\.export.* is deprecated",
)
"""Regular expressions of the exporter's warnings and log lines that say nothing about the exported model; they are
dropped while :func:`export_onnx` runs, every other warning is shown."""


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(re.match(p, record.getMessage()) for p in HARMLESS_EXPORT_MESSAGES)


@contextlib.contextmanager
def _quiet_exporter():
    """Drop the exporter's known harmless warnings and log lines (:data:`HARMLESS_EXPORT_MESSAGES`), only those."""
    drop = _DropHarmless()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    with warnings.catch_warnings():
        for pattern in HARMLESS_EXPORT_MESSAGES:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)


def _write_onnx(program, path: Path, weight_bytes: int) -> None:
    """Write an exported program to ``path`` atomically: one file when the weights fit in it, else the file and
    its ``NAME.data`` beside it (the data first, so the ``.onnx`` never names missing data). The nodes' metadata
    (the exporter's source stack traces, with the exporting machine's paths, module and FX node names) is left
    out."""
    for node in program.model.graph.all_nodes():  # the exporter's debug notes: no use at run time
        node.metadata_props.clear()
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".part"))
    try:
        if weight_bytes <= ONNX_SIZE_LIMIT:
            program.save(str(tmp / path.name), external_data=False)
        else:
            import onnx

            program.save(str(tmp / "exported.onnx"), external_data=True)
            proto = onnx.load(str(tmp / "exported.onnx"), load_external_data=True)
            onnx.save(proto, str(tmp / path.name), save_as_external_data=True, location=path.name + ".data")
            os.replace(tmp / (path.name + ".data"), path.parent / (path.name + ".data"))
        with open(tmp / path.name, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _repeat_rows(ex: ExampleInput, rows: int, batch: int) -> ExampleInput:
    """``ex`` with every tensor whose first dimension is ``rows`` repeated to ``batch`` rows (``rows`` divides it
    when ``rows`` is 1; else the first ``batch`` of the tiled rows)."""

    def grow(t: object) -> object:
        if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] != rows:
            return t
        reps = -(-batch // rows)
        return t.detach().repeat(reps, *([1] * (t.dim() - 1)))[:batch]

    return ExampleInput(tuple(grow(a) for a in ex.args), {k: grow(v) for k, v in ex.kwargs.items()})


def export_float(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: Iterable[int] | None = None,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
    *,
    example_input: torch.Tensor | tuple | Mapping | None = None,
) -> Path:
    """The float ONNX file of :func:`smoothcompress.export_onnx` (its arguments but ``int8`` and ``calibration``,
    which it handles itself), written to ``path``; see there."""
    path = Path(path)
    if input_shape is None and example_input is None:
        raise ConfigError("export_onnx needs an input_shape, e.g. (1, 3, 32, 32), or an example_input")
    if example_input is None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ConfigError(
                f"input_shape must include the batch dimension and be positive, e.g. (1, 3, 32, 32); got {shape}"
            )
    ex = as_example(model, example_input, input_shape)
    if ex.call is not None:
        raise ConfigError("export_onnx traces the model on tensors: pass example_input as a tensor, tuple or dict")
    ex.inputs()  # positional or keyword tensors, not both (one-line ConfigError)
    what = f"input shape {ex.shape}" if example_input is None else f"example input {ex.describe()}"
    # torch.export specialises a dimension of size 1, so trace a dynamic batch with at least 2 samples
    rows = ex.batch_size or 1
    batch = max(2, rows) if dynamic_batch else rows
    if example_input is None:
        zero = ex.args[0]  # a zero input of input_shape in the model's dtype: traced on random normal values
        ex = ExampleInput((torch.randn((batch, *zero.shape[1:]), dtype=zero.dtype, device=zero.device),))
    elif batch != rows:
        ex = _repeat_rows(ex, rows, batch)
    kwargs = {"dynamo": True, "verbose": False, "kwargs": dict(ex.kwargs) or None}
    if len(ex.args) == 1 and not ex.kwargs:
        kwargs |= {"input_names": ["input"], "output_names": ["output"]}
    if dynamic_batch:
        dim = torch.export.Dim("batch")

        def spec(t: object) -> dict | None:
            return {0: dim} if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == batch else None

        if ex.kwargs:
            kwargs["dynamic_shapes"] = {k: spec(v) for k, v in ex.kwargs.items()}
        else:
            kwargs["dynamic_shapes"] = tuple(spec(a) for a in ex.args)
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                ex.run(model)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = first_line(e)
                raise ConfigError(
                    f"{what} does not fit the model ({first}); pass the shape it takes, batch "
                    "included, e.g. (1, 3, 32, 32), or an example_input (int64 token ids, a tuple or dict of tensors)"
                ) from None
            path.parent.mkdir(parents=True, exist_ok=True)
            with _quiet_exporter():
                program = torch.onnx.export(model, tuple(ex.args), None, **kwargs)
            weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
            _write_onnx(program, path, weight_bytes)
    finally:
        model.train(was_training)
    return path

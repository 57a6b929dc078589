"""Top-1 accuracy: :func:`evaluate` for users, and the sharded counting the trainer uses every epoch.

:func:`evaluate` takes a model (or an ``.onnx`` file, run by onnxruntime through
:class:`~smoothcompress.onnxmodel.OnnxModel`) and a :class:`~smoothcompress.study.data.Dataset` (its test split,
normalised with its mean and std) or any iterable of ``(x (B, C, H, W) float, y (B,) int64)`` batches, and returns
the fraction of correct top-1 predictions. The model's train/eval mode and memory format are restored afterwards.

Before counting, :func:`evaluate` checks that model and data fit, so that a mismatch is an error instead of a
meaningless accuracy: the images' channels match those of a registry model (``sc_arch``), one forward pass of a
single input runs and gives ``(1, K)`` logits, and ``K`` is the dataset's number of classes (for an iterable of
batches, which does not say how many classes it has: every label is below ``K``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from smoothcompress.errors import ConfigError, first_line
from smoothcompress.inputs import check_input
from smoothcompress.models import default_input_shape
from smoothcompress.study.data import Dataset, Loader
from smoothcompress.study.training.config import DEVICES
from smoothcompress.study.training.runtime import DistContext, resolve_device

__all__ = ["EVAL_BATCH", "evaluate", "count_correct", "eval_loader", "to_input"]

EVAL_BATCH = 1024
"""Default batch size of evaluation."""


def to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in channels_last memory format when ``channels_last`` and ``x`` is a 4-D image batch, else ``x``."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


@torch.no_grad()
def count_correct(
    model: nn.Module, batches: Iterable, device: torch.device, bf16: bool, channels_last: bool
) -> torch.Tensor:
    """``[correct, total]`` (float64, on ``device``) over ``batches`` of ``(x (B, C, H, W), y (B,))``."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for x, y in batches:
            x, y = to_input(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            counts[0] += (logits.argmax(1) == y).sum()
            counts[1] += y.shape[0]
    finally:
        model.train(was_training)
    return counts


def eval_loader(
    dataset: Dataset, device: torch.device, ctx: DistContext | None = None, batch_size: int = EVAL_BATCH
) -> Loader:
    """This process's shard ``rank::world_size`` of the test split, unaugmented, in order (all of it alone)."""
    ctx = ctx if ctx is not None else DistContext()
    return Loader(
        dataset.x_test,
        dataset.y_test,
        batch_size,
        train=False,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


def evaluate(
    model: nn.Module | str | os.PathLike,
    data: Dataset | Iterable,
    *,
    device: str | torch.device | None = None,
    batch_size: int = EVAL_BATCH,
    bf16: bool = False,
    channels_last: bool | None = None,
) -> float:
    """Top-1 accuracy of ``model``, a fraction in [0, 1].

    Parameters
    ----------
    model : nn.Module, or str or PathLike of an ``.onnx`` file
        Maps ``(B, C, H, W)`` float inputs to ``(B, num_classes)`` logits. Evaluated in eval mode; its
        train/eval mode is restored afterwards. An ``.onnx`` file (float or int8, e.g. from
        :func:`smoothcompress.export_onnx`) runs in onnxruntime on the CPU as
        :class:`~smoothcompress.onnxmodel.OnnxModel` (the ``[onnx]`` extra); pass ``OnnxModel(path, threads=N)``
        to choose its threads.
    data : Dataset or iterable of (x, y)
        A :class:`~smoothcompress.study.data.Dataset` (its test split is used, normalised with its mean and std),
        or a :class:`~smoothcompress.study.data.Loader` / any iterable of ``(x (B, C, H, W) float, y (B,) int64)``.
    device : str or torch.device, optional
        Where to run (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); the model is moved there. Default:
        where the model's parameters already are.
    batch_size : int
        Batch size when ``data`` is a Dataset.
    bf16 : bool
        Run the forward pass under bfloat16 autocast (faster on GPU, slightly different numbers).
    channels_last : bool, optional
        Run the convs in channels_last memory format (the fast layout of cuDNN and oneDNN); the model's weights
        are converted for the call and converted back afterwards. ``None``: when the model has a Conv2d.

    Raises
    ------
    ValueError
        When ``data`` yields no samples, ``device`` names no usable device, or model and data do not fit: images
        of other channels than a registry model's, inputs the model cannot take, outputs that are not
        ``(batch, classes)`` logits, or a number of outputs other than the dataset's number of classes (for
        batches: a label the outputs cannot score), or a path that is not an ``.onnx`` file. The one-line message
        names both sides.
    FileNotFoundError
        No file at the ``.onnx`` path.
    """
    if isinstance(model, str | os.PathLike):
        model = _onnx_model(Path(model))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if channels_last is None:
        channels_last = bool(convs)
    convert = channels_last and any(not m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        return _accuracy(model, data, device, batch_size, bf16, channels_last)
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


def _onnx_model(path: Path) -> nn.Module:
    """The ``.onnx`` file at ``path`` as an onnxruntime-backed module; ConfigError for another kind of path."""
    if path.suffix != ".onnx":
        raise ConfigError(
            f"evaluate takes a model or an .onnx file, not {path.name}; load a checkpoint first: "
            "evaluate(smoothcompress.load(path), data)"
        )
    from smoothcompress.onnxmodel import OnnxModel  # imported here: it loads onnxruntime

    return OnnxModel(path)


def _accuracy(model, data, device, batch_size: int, bf16: bool, channels_last: bool) -> float:
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    else:
        device = resolve_device(device) if device in DEVICES else torch.device(device)
        model.to(device)
    if isinstance(data, Dataset):
        check_input(model, data)  # the input card of a trained model: classes, shape, normalisation
        width = _check_fits(model, (1, *data.input_shape), data.name, device, bf16, channels_last)
        if width != data.num_classes:
            raise ConfigError(
                f"the model outputs {width} classes but dataset {data.name} has {data.num_classes}; evaluate the "
                "model on the data it was trained for"
            )
        batches = eval_loader(data, device, batch_size=batch_size)
        correct, total = count_correct(model, batches, device, bf16, channels_last).tolist()
    else:
        correct, total = _count_checked(model, data, device, bf16, channels_last)
    if total == 0:
        raise ConfigError("evaluate() got no samples")
    return correct / total


def _shape_text(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def _check_fits(
    model: nn.Module, shape: tuple[int, ...], source: str, device: torch.device, bf16: bool, channels_last: bool
) -> int:
    """The number of outputs of ``model`` on one input of ``shape`` ``(1, C, ...)`` from ``source``; ValueError
    (one line, naming both sides) when a registry model takes other channels, the forward pass fails, or its
    output is not ``(1, K)`` logits."""
    expected = default_input_shape(model)
    if expected is not None and len(shape) == len(expected) and shape[1] != expected[1]:
        raise ConfigError(
            f"the model takes {expected[1]}-channel images ({_shape_text(expected[1:])}, as registered) but "
            f"{source} has {_shape_text(shape[1:])} images; evaluate the model on the data it was trained for"
        )
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    x = to_input(torch.zeros(shape, device=device, dtype=ref.dtype if ref is not None else None), channels_last)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = first_line(e)
        raise ConfigError(
            f"the model cannot take the {_shape_text(shape[1:])} inputs of {source} ({first}); evaluate the model "
            "on the data it was trained for"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(
            f"the model maps a {_shape_text(shape[1:])} input of {source} to {got}, not (batch, classes) logits"
        )
    return int(out.shape[1])


def _count_checked(model: nn.Module, batches: Iterable, device: torch.device, bf16: bool, channels_last: bool):
    """``(correct, total)`` over ``batches`` after checking that the model takes the first one's inputs, and that
    every label is below the model's number of outputs."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return 0.0, 0.0
    x0 = first[0]
    width = _check_fits(model, (1, *x0.shape[1:]), "the batches", device, bf16, channels_last)
    top = torch.full((), -1, dtype=torch.int64, device=device)

    def labelled():
        nonlocal top
        for x, y in itertools.chain([first], it):
            y = y.to(device, non_blocking=True)
            top = torch.maximum(top, y.max()) if y.numel() else top  # no host sync per batch
            yield x, y

    correct, total = count_correct(model, labelled(), device, bf16, channels_last).tolist()
    if int(top) >= width:
        raise ConfigError(
            f"the model outputs {width} classes but the batches have label {int(top)}; evaluate the model on the "
            "data it was trained for"
        )
    return correct, total

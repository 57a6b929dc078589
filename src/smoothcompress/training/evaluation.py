"""Top-1 accuracy: :func:`evaluate` for users, and the sharded counting the trainer uses every epoch.

:func:`evaluate` takes a model and a :class:`~smoothcompress.data.Dataset` (its test split, normalised with its
mean and std) or any iterable of ``(x (B, C, H, W) float, y (B,) int64)`` batches, and returns the fraction of
correct top-1 predictions. The model's train/eval mode and memory format are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from smoothcompress.data import Dataset, Loader
from smoothcompress.training.config import DEVICES
from smoothcompress.training.runtime import DistContext, resolve_device

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
    model: nn.Module,
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
    model : nn.Module
        Maps ``(B, C, H, W)`` float inputs to ``(B, num_classes)`` logits. Evaluated in eval mode; its
        train/eval mode is restored afterwards.
    data : Dataset or iterable of (x, y)
        A :class:`~smoothcompress.data.Dataset` (its test split is used, normalised with its mean and std),
        or a :class:`~smoothcompress.data.Loader` / any iterable of ``(x (B, C, H, W) float, y (B,) int64)``.
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
        When ``data`` yields no samples, or ``device`` names no usable device.
    """
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


def _accuracy(model, data, device, batch_size: int, bf16: bool, channels_last: bool) -> float:
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    else:
        device = resolve_device(device) if device in DEVICES else torch.device(device)
        model.to(device)
    batches = eval_loader(data, device, batch_size=batch_size) if isinstance(data, Dataset) else data
    correct, total = count_correct(model, batches, device, bf16, channels_last).tolist()
    if total == 0:
        raise ValueError("evaluate() got no samples")
    return correct / total

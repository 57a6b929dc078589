"""What a model takes as input: one :class:`ExampleInput` for FLOP counts, tracing, pruning, export and calibration.

An example input is made by :func:`as_example` from a tensor of any dtype (float images, int64 token ids), a
tuple or list of tensors (positional arguments), a mapping of tensors (keyword arguments; a Hugging Face
``BatchEncoding`` is one), a callable ``f(model)`` that runs the model, or, with none of these, the registry's
input shape (:func:`smoothcompress.models.default_input_shape`) or a given ``input_shape`` as a zero float tensor
on the model's device and dtype. Calibration data is any iterable of batches; :func:`as_batch` turns one batch
(a tensor, a mapping, an :class:`ExampleInput`, or a tuple/list ``(inputs, labels, ...)`` whose first item is one
of those) into the call the model gets.

>>> import torch, smoothcompress as sc
>>> from smoothcompress.inputs import as_example
>>> model = torch.nn.Embedding(10, 4)
>>> ex = as_example(model, torch.zeros(2, 5, dtype=torch.long))
>>> ex.describe(), ex.batch_size
('int64[2, 5]', 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from smoothcompress.errors import ConfigError
from smoothcompress.models import INPUT_ATTR, default_input_shape

__all__ = [
    "CALIBRATION_IMAGES",
    "ExampleInput",
    "as_batch",
    "as_example",
    "check_input",
    "first_tensor",
    "record_input",
    "NORMALIZATION_TOLERANCE",
    "zeros_input",
]

CALIBRATION_IMAGES = 2048
"""Default number of calibration inputs (images, or rows of token ids) of every data-aware step: calibration,
BatchNorm re-estimation, sequential reconstruction, the methods, sweeps and the command line."""


def _describe_tensor(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]"
    return type(t).__name__


def _move(value: Any, device: str | torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _rows(value: Any, n: int, batch: int) -> Any:
    """The first ``n`` rows of ``value`` when it is a tensor whose first dimension is the batch, else ``value``."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
        return value[:n]
    return value


@dataclass(frozen=True)
class ExampleInput:
    """One call of a model: ``model(*args, **kwargs)``, or ``call(model)``.

    Attributes
    ----------
    args : tuple
        Positional arguments, e.g. ``(x,)`` with ``x`` of shape (B, C, H, W) float or (B, T) int64.
    kwargs : dict
        Keyword arguments, e.g. ``{"input_ids": (B, T) int64, "attention_mask": (B, T) int64}``.
    call : callable, optional
        ``call(model)`` runs the model itself; ``args`` and ``kwargs`` are then empty.
    """

    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    call: Callable[[nn.Module], Any] | None = None

    def run(self, model: nn.Module, *, grad: bool = False) -> Any:
        """``model``'s output on this input; under ``torch.no_grad()`` unless ``grad``."""
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            if self.call is not None:
                return self.call(model)
            return model(*self.args, **self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors of the call, positional first; empty for a callable."""
        return [v for v in (*self.args, *self.kwargs.values()) if isinstance(v, torch.Tensor)]

    @property
    def batch_size(self) -> int | None:
        """Size of the first dimension of the first tensor; ``None`` for a callable or a 0-dim tensor."""
        t = next(iter(self.tensors()), None)
        return int(t.shape[0]) if t is not None and t.dim() >= 1 else None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of the first tensor (batch included), for records; ``None`` for a callable."""
        t = next(iter(self.tensors()), None)
        return None if t is None else tuple(int(s) for s in t.shape)

    def to(self, device: str | torch.device) -> ExampleInput:
        """The same call with every tensor on ``device`` (a callable is kept as it is)."""
        if self.call is not None:
            return self
        return ExampleInput(
            tuple(_move(a, device) for a in self.args), {k: _move(v, device) for k, v in self.kwargs.items()}
        )

    def head(self, n: int) -> ExampleInput:
        """The call on the first ``n`` rows of the batch (tensors whose first dimension is the batch size)."""
        batch = self.batch_size
        if self.call is not None or batch is None:
            return self
        return ExampleInput(
            tuple(_rows(a, n, batch) for a in self.args), {k: _rows(v, n, batch) for k, v in self.kwargs.items()}
        )

    def inputs(self) -> torch.Tensor | tuple | dict:
        """The call as Torch-Pruning's ``example_inputs`` take it: one tensor, a tuple (positional) or a dict."""
        if self.call is not None:
            raise ConfigError("this needs the model's inputs as tensors, not a callable; pass a tensor, tuple or dict")
        if self.kwargs and self.args:
            raise ConfigError("pass the example input as positional tensors or as keyword tensors, not both")
        if self.kwargs:
            return dict(self.kwargs)
        return self.args[0] if len(self.args) == 1 else tuple(self.args)

    def describe(self) -> str:
        """A short description for records and messages, e.g. ``"int64[2, 12]"`` or
        ``"input_ids=int64[2, 12], attention_mask=int64[2, 12]"``."""
        if self.call is not None:
            return f"callable {getattr(self.call, '__name__', type(self.call).__name__)}"
        parts = [_describe_tensor(a) for a in self.args]
        parts += [f"{k}={_describe_tensor(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts) or "no arguments"


def zeros_input(model: nn.Module, input_shape: Iterable[int]) -> torch.Tensor:
    """A zero tensor of ``input_shape`` (batch included) on ``model``'s device, in its floating dtype.

    Raises
    ------
    ConfigError
        An empty shape or a size below 1.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"input_shape must be a sequence of positive sizes (batch included), got {input_shape!r}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"input_shape must be a non-empty sequence of positive sizes (batch included), got {shape}")
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else "cpu"
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return torch.zeros(shape, device=device, dtype=dtype)


def _from_value(value: Any, what: str) -> ExampleInput:
    if isinstance(value, ExampleInput):
        return value
    if isinstance(value, torch.Tensor):
        return ExampleInput((value,))
    if isinstance(value, Mapping):
        if not value or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{what} as a mapping needs string keys naming the model's arguments, got {value!r}")
        return ExampleInput((), dict(value))
    if isinstance(value, (tuple, list)):
        if not value or not any(isinstance(v, torch.Tensor) for v in value):
            raise ConfigError(f"{what} as a tuple needs at least one tensor, got {_describe_all(value)}")
        return ExampleInput(tuple(value))
    if callable(value) and not isinstance(value, nn.Module):
        return ExampleInput(call=value)
    raise ConfigError(
        f"{what} must be a tensor, a tuple or list of tensors, a dict of tensors or a callable f(model), "
        f"got {type(value).__name__}"
    )


def _describe_all(value: Iterable) -> str:
    return "(" + ", ".join(_describe_tensor(v) for v in value) + ")"


def as_example(model: nn.Module, example: Any = None, input_shape: Iterable[int] | None = None) -> ExampleInput:
    """The example input of ``model``: ``example`` in any accepted form, else a zero input of ``input_shape``,
    else of the registry's shape.

    Parameters
    ----------
    model : nn.Module
        Gives the device and dtype of a zero input, and the registry shape (``sc_arch``).
    example : Tensor, tuple/list of Tensor, mapping of str to Tensor, callable or ExampleInput, optional
        A tensor of any dtype, shape (B, ...); positional tensors; keyword tensors; ``f(model)`` running the model.
    input_shape : sequence of int, optional
        Full shape (B, ...) of a zero float input, used when ``example`` is ``None``. With a single-tensor
        ``example`` too, the two must agree.

    Returns
    -------
    ExampleInput

    Raises
    ------
    ConfigError
        One line: a form not accepted, a shape that disagrees with the example, or neither given for a model
        whose input the registry does not know.
    """
    if example is not None:
        ex = _from_value(example, "example")
        if input_shape is not None and len(ex.args) == 1 and not ex.kwargs:
            shape = tuple(int(s) for s in input_shape)
            if ex.shape != shape:
                raise ConfigError(f"the example input is {ex.describe()}, but input_shape is {shape}")
        return ex
    if input_shape is None:
        input_shape = default_input_shape(model)
    if input_shape is None:
        raise ConfigError(
            f"the input of {type(model).__name__} is not known: pass example= (a tensor, e.g. int64 token ids "
            "(1, seq), a tuple or dict of tensors, or f(model)) or input_shape=(1, C, H, W) (batch included)"
        )
    return ExampleInput((zeros_input(model, input_shape),))


def as_batch(batch: Any) -> ExampleInput:
    """The call a calibration batch stands for.

    Parameters
    ----------
    batch : Tensor, mapping, ExampleInput, or tuple/list
        A tensor of inputs (B, ...), a mapping of keyword tensors, an ExampleInput, or ``(inputs, labels, ...)``
        whose first item is one of these (the rest is not passed to the model).

    Raises
    ------
    ConfigError
        Anything else, named with its dtypes and shapes.
    """
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError("a calibration batch is an empty tuple; give (inputs, labels, ...) or inputs")
        batch = batch[0]
    if isinstance(batch, (torch.Tensor, Mapping, ExampleInput)):
        return _from_value(batch, "a calibration batch")
    shown = _describe_all(batch) if isinstance(batch, (tuple, list)) else _describe_tensor(batch)
    raise ConfigError(
        f"calibration batches must be tensors, dicts of tensors or (inputs, labels, ...) tuples, got {shown}"
    )


def first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor of a model's output: the tensor itself, or the first in a tuple, list, dict or
    ``ModelOutput`` (depth first); ``None`` when there is none."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


# ---------------------------------------------------------------------------------------------------------
# What a trained model takes: its input card


def record_input(model: nn.Module, dataset: Any) -> dict:
    """Record on ``model`` (``model.sc_input``, :data:`smoothcompress.models.INPUT_ATTR`) what it was trained on.

    Parameters
    ----------
    model : nn.Module
        The trained model; :func:`smoothcompress.save` writes the card with the weights and :func:`smoothcompress.load`
        restores it.
    dataset : Dataset
        A :class:`smoothcompress.study.data.Dataset` (anything with ``input_shape``, ``classes``, ``mean``, ``std`` and
        ``name``).

    Returns
    -------
    dict
        ``{"shape": [C, H, W], "dtype": "float32", "mean": [...], "std": [...], "num_classes": K, "dataset": NAME}``.
    """
    card = {
        "shape": [int(d) for d in dataset.input_shape],
        "dtype": "float32",
        "mean": [float(v) for v in dataset.mean],
        "std": [float(v) for v in dataset.std],
        "num_classes": len(dataset.classes),
        "dataset": str(dataset.name),
    }
    setattr(model, INPUT_ATTR, card)
    return card


NORMALIZATION_TOLERANCE = 0.05
"""Relative difference of a channel's mean or std beyond which data is normalised differently from what the model
was trained on (two copies of one dataset, e.g. PNG and JPEG, differ by far less)."""


def check_input(model: nn.Module, dataset: Any) -> None:
    """Refuse data that does not fit the input card of ``model`` (see :func:`record_input`); no card, no check.

    Raises
    ------
    ConfigError
        One line naming both sides: another number of classes, another input shape, or another normalisation
        (a channel's mean or std more than :data:`NORMALIZATION_TOLERANCE` apart, relative).
    """
    card = getattr(model, INPUT_ATTR, None)
    if not isinstance(card, dict):
        return
    trained = f"the model was trained on {card.get('dataset', 'its data')}"
    k = card.get("num_classes")
    if k is not None and len(dataset.classes) != k:
        raise ConfigError(
            f"{trained} with {k} classes, {dataset.name} has {len(dataset.classes)}; evaluate on data of its classes"
        )
    shape = card.get("shape")
    if shape is not None and list(dataset.input_shape) != list(shape):
        raise ConfigError(
            f"{trained} with inputs of shape {tuple(shape)}, {dataset.name} has {tuple(dataset.input_shape)}; "
            "evaluate on data of that shape"
        )
    for key in ("mean", "std"):
        want, got = card.get(key), list(dataset.__getattribute__(key))
        if want is None or len(want) != len(got):
            continue
        if any(abs(a - b) > NORMALIZATION_TOLERANCE * max(abs(a), 1e-3) for a, b in zip(want, got, strict=True)):
            raise ConfigError(
                f"{trained}, normalised with {key} {[round(v, 3) for v in want]}; {dataset.name} has "
                f"{[round(v, 3) for v in got]}: other data; evaluate on a copy of the training data"
            )

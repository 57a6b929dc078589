"""Calibration data: per-layer input statistics from forward passes on training images, no gradient step.

:func:`calibrate` runs a few thousand training images through a model and keeps, for every Conv2d (``groups=1``)
and Linear layer, the second moment of that layer's input: ``C = E[x x^T]`` over input patches ``x`` of
dimension ``d = C_in * kh * kw`` (a conv's unfolded receptive field, in the order of ``W.reshape(C_out, d)``) or
``d = in_features`` (a Linear's input vector). The moments are accumulated batch by batch in float64 by forward
hooks, without storing activations; conv positions are subsampled at random (seeded) where a layer has more
positions than its ``d`` needs. :func:`smoothcompress.compress` uses them (``calibration=``) to truncate each layer
in the metric of its inputs, ``min ||(W - W_r) X||_F``, and to allocate ranks by output error.

:func:`calibration_batches` is the one way calibration data comes in (also for
:func:`smoothcompress.recalibrate_bn`): a :class:`~smoothcompress.study.data.Dataset` (its training split only, never
the test split), a :class:`~smoothcompress.study.data.Loader` or any iterable of batches, or a tensor of inputs. A batch
is any call of the model (:func:`smoothcompress.inputs.as_batch`): a tensor of any dtype (float images, int64 token
ids), a dict of keyword tensors (``{"input_ids": ..., "attention_mask": ...}``), an
:class:`~smoothcompress.inputs.ExampleInput`, or ``(inputs, labels, ...)`` with one of those first.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from smoothcompress.errors import ConfigError, first_line
from smoothcompress.inputs import CALIBRATION_IMAGES, ExampleInput, as_batch
from smoothcompress.layers import is_linear, layer_weight

__all__ = [
    "CALIBRATION_IMAGES",
    "Batch",
    "Calibration",
    "CalibrationData",
    "CalibrationSource",
    "available_inputs",
    "calibrate",
    "calibration_batches",
    "describe_source",
    "input_dim",
    "sample_patches",
    "recalibrate_bn",
    "warn_short_layers",
    "run_batch",
    "run_batches",
]


@runtime_checkable
class CalibrationSource(Protocol):
    """A source that draws its own calibration batches from its training split, such as
    :class:`smoothcompress.study.data.Dataset`; :func:`calibration_batches` asks it for them.

    Any object with these three members is one (checked by ``isinstance``, no base class needed).
    """

    augment: bool
    """Whether its training augmentation suits its inputs: the default of ``augment`` in :func:`recalibrate_bn`."""

    def calibration_size(self) -> int:
        """Number of training inputs it holds (calibration never reads anything else)."""
        ...

    def calibration_batches(
        self, images: int, batch_size: int, *, seed: int, augment: bool, device: str | torch.device
    ) -> Iterator[torch.Tensor]:
        """Batches of ``min(images, calibration_size())`` training inputs drawn at random with ``seed``, model-ready
        (normalised), with the training augmentation when ``augment``; see :func:`calibration_batches`."""
        ...


CalibrationData = CalibrationSource | Iterable | torch.Tensor
Batch = torch.Tensor | Mapping | ExampleInput
"""One batch of model inputs as :func:`calibration_batches` yields it (see :func:`smoothcompress.inputs.as_batch`)."""

# Input samples kept per layer: at least MIN_SAMPLES, and SAMPLES_PER_DIM per input dimension, so that the
# moment of a d-dimensional input is estimated from several times d samples. Positions beyond that are skipped
# (subsampled at random): the cost of a layer is d**2 per sample, and a 3x3 conv on 512 channels has d = 4608.
MIN_SAMPLES = 8192
SAMPLES_PER_DIM = 2
# Relative ridge on the input moments (see Calibration.damping); chosen in benchmarks/bench_data_aware.py.
DAMPING = 0.01


def _is_calibratable(module: nn.Module) -> bool:
    return is_linear(module) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def input_dim(module: nn.Module) -> int:
    """Input dimension ``d`` of a layer's matricized weight: ``C_in * kh * kw`` for a Conv2d, ``in_features`` for
    a Linear or Linear-like layer (:mod:`smoothcompress.layers`)."""
    w = layer_weight(module)
    return int(w.shape[1]) * (int(w.shape[2]) * int(w.shape[3]) if w.dim() == 4 else 1)


# ---------------------------------------------------------------------------------------------------------
# Calibration data in any form -> batches of model inputs


def calibration_batches(
    data: CalibrationData,
    images: int,
    batch_size: int = 256,
    *,
    seed: int = 0,
    augment: bool = False,
    device: str | torch.device = "cpu",
) -> Iterator[Batch]:
    """Batches of at most ``images`` model inputs, from the training split only.

    Parameters
    ----------
    data : Dataset, Loader, iterable or Tensor
        A :class:`~smoothcompress.study.data.Dataset`: ``images`` training images drawn at random (seeded), normalised
        with the dataset's mean and std; its test split is never read. A Loader or any iterable of batches
        ``x`` or ``(x, y, ...)``, ``x`` a tensor of any dtype, a dict of keyword tensors or an ExampleInput: its
        batches in order until ``images`` inputs were given (rows of the batch's first dimension). A Tensor of
        inputs ``(N, ...)`` of any dtype (float images, int64 token ids ``(N, T)``): its first ``images`` rows.
    images : int
        Number of inputs, at least 1. A source with fewer inputs gives all it has.
    batch_size : int
        Batch size for a Dataset or Tensor (an iterable keeps its own batching, cut at ``images``).
    seed : int
        Which training images a Dataset gives (and their augmentation).
    augment : bool
        Apply the dataset's training augmentation (random crop and flip) to a Dataset's images.
    device : str or torch.device
        Where the batches are made.

    Yields
    ------
    Tensor, dict or ExampleInput
        Inputs of batch size B (B <= batch_size for a Dataset or Tensor), together ``min(images, available)``
        rows: a tensor (B, ...) for a Dataset, a Tensor or tensor batches; a dict or ExampleInput as given.
    """
    images, batch_size = int(images), int(batch_size)
    if images < 1:
        raise ConfigError(f"images must be at least 1, got {images}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, CalibrationSource):
        yield from data.calibration_batches(images, batch_size, seed=seed, augment=augment, device=device)
        return
    if isinstance(data, torch.Tensor):
        if data.dim() < 2:
            raise ConfigError(
                f"calibration inputs must be a tensor of shape (N, ...) with a batch dimension, got "
                f"{str(data.dtype).removeprefix('torch.')} {tuple(data.shape)}"
            )
        for start in range(0, min(images, data.shape[0]), batch_size):
            yield data[start : min(start + batch_size, images)].to(device)
        return
    if not isinstance(data, Iterable):
        raise ConfigError(
            f"calibration data must be a Dataset, a Loader, an iterable of batches or a tensor, got {data!r}"
        )
    given = 0
    for batch in data:
        call = as_batch(batch)
        if call.batch_size is None:
            raise ConfigError(f"a calibration batch needs a batch dimension, got {call.describe()}")
        call = call.head(images - given).to(device)
        given += call.batch_size
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, torch.Tensor):
            yield call.args[0]
        elif isinstance(x, Mapping):
            yield dict(call.kwargs)
        else:
            yield call
        if given >= images:
            return


def available_inputs(data: CalibrationData) -> int | None:
    """How many inputs ``data`` gives at most, or ``None`` when only iterating it would tell.

    A Dataset: its training split's size (``calibration_size()``); a Tensor ``(N, ...)``: ``N``; a list or tuple
    of batches: the sum of their batch sizes; a loader with a sampler or a per-epoch count (a
    ``torch.utils.data.DataLoader`` batching automatically, a :class:`~smoothcompress.study.data.Loader`): the
    samples of one pass, less a partial last batch when it drops that. Any other iterable: ``None``.
    """
    if isinstance(data, CalibrationSource):
        return int(data.calibration_size())
    if isinstance(data, torch.Tensor):
        return int(data.shape[0]) if data.dim() else None
    if isinstance(data, (list, tuple)):
        sizes = [as_batch(b).batch_size for b in data]
        return None if any(n is None for n in sizes) else sum(sizes)
    batch_size, drop_last = getattr(data, "batch_size", None), bool(getattr(data, "drop_last", False))
    if isinstance(data, DataLoader) and batch_size is not None:
        try:
            n = len(data.sampler)
        except TypeError:  # an IterableDataset's sampler has no length
            return None
    elif isinstance(getattr(data, "num_samples", None), int) and isinstance(batch_size, int):
        n = data.num_samples
    else:
        return None
    return n - n % batch_size if drop_last else n


def describe_source(data: CalibrationData, images: int) -> dict:
    """What a row or record says of calibration data: ``{"images": n, "split": s}``.

    ``n`` is ``images``, or fewer when the source holds fewer (:func:`available_inputs`; a source it cannot count
    is taken at its word); ``s`` is ``"train"`` for a Dataset (only its training split is ever read), ``"given"``
    otherwise.
    """
    available = available_inputs(data)
    n = int(images) if available is None else min(int(images), available)
    return {"images": n, "split": "train" if isinstance(data, CalibrationSource) else "given"}


def run_batch(model: nn.Module, batch: Batch) -> object:
    """``model``'s output on one calibration batch (:func:`smoothcompress.inputs.as_batch`), without gradients.

    A batch the model cannot take raises a one-line :class:`~smoothcompress.errors.ConfigError` naming the
    batch's dtype and shape, e.g. ``float32[2, 12]``, and quoting the model's error.
    """
    call = as_batch(batch)
    try:
        return call.run(model)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = first_line(e)
        raise ConfigError(f"calibration inputs {call.describe()} do not fit the model: {first}") from e


def run_batches(model: nn.Module, batches: Iterable[Batch]) -> int:
    """Forward every batch through ``model`` without gradients (:func:`run_batch`); return the number of inputs
    (rows of each batch's first dimension).

    A batch that does not fit the model raises a one-line ConfigError naming its dtype and shape.
    """
    seen = 0
    for x in batches:
        run_batch(model, x)
        seen += as_batch(x).batch_size or 0
    if seen == 0:
        raise ConfigError("the calibration data gave no inputs")
    return seen


# ---------------------------------------------------------------------------------------------------------
# Input moments


@dataclass
class Calibration:
    """Second moments of the inputs of a model's layers, from training images.

    Attributes
    ----------
    moments : dict of str to Tensor
        Layer name -> ``E[x x^T]``, float64, shape (d, d), ``d`` from :func:`input_dim`; for a conv ``x`` is an
        unfolded input patch ordered ``(c, i, j)`` like ``W.reshape(C_out, C_in*kh*kw)``.
    samples : dict of str to int
        Layer name -> number of input vectors (patches or rows) averaged.
    shapes : dict of str to tuple of int
        Layer name -> weight shape of the layer that was calibrated (to refuse another model's calibration).
    images : int
        Number of calibration inputs (images) passed forward.
    split : str
        Where they came from: ``"train"`` for a Dataset's training split; ``"given"`` for inputs passed directly.
    augment : bool
        Whether the training augmentation was applied.
    seconds : float
        Wall time of the calibration.
    damping : float
        Ridge added by :meth:`moment`: ``C + damping * mean(diag C) * I``. It makes a moment estimated from few
        samples positive definite (full rank stays exact) and pulls directions the calibration inputs never excite
        towards plain truncation. 0 gives the exact optimum on the calibration inputs.
    center : bool
        Truncate layers that feed a BatchNorm in the metric of their *centered* inputs, ``C - mu mu^T``: the
        error ``(W - W_r) mu`` is then a per-channel constant that :func:`recalibrate_bn` removes, so the rank goes
        to what recalibration cannot fix. For compression followed by BatchNorm recalibration (``svd-data+bn``).
    means : dict of str to Tensor
        Layer name -> ``E[x]``, float64, shape (d,).
    """

    moments: dict[str, torch.Tensor] = field(repr=False)
    means: dict[str, torch.Tensor] = field(repr=False)
    samples: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    images: int
    split: str
    augment: bool = False
    seconds: float = 0.0
    damping: float = DAMPING
    center: bool = False

    def moment(self, name: str, scheme: str = "channel", centered: bool = False) -> torch.Tensor:
        """The input moment of layer ``name`` in the metric a scheme's matricization needs.

        Parameters
        ----------
        name : str
            Layer name, as in ``model.named_modules()``.
        scheme : {"channel", "spatial"}
            ``"channel"``: the (d, d) moment of whole patches. ``"spatial"``: the (C_in*kh, C_in*kh) moment of
            one column of the kernel window, averaged over the kw columns (the matricization's columns are
            ``(c, i)``; the kw shifted copies of a column have the same statistics up to the image border).
        centered : bool
            The covariance ``E[x x^T] - E[x] E[x]^T`` instead of the second moment.

        Returns
        -------
        Tensor
            float64, symmetric, positive definite when ``damping > 0`` (else semi-definite), damped as documented
            under ``damping``.
        """
        if name not in self.moments:
            raise KeyError(f"layer {name!r} was not calibrated")
        c, mu = self.moments[name], self.means[name]
        if centered:
            c = c - mu[:, None] * mu[None, :]
        shape = self.shapes[name]
        if scheme != "channel" and len(shape) == 4 and tuple(shape[2:]) != (1, 1):
            c_in, kh, kw = shape[1], shape[2], shape[3]
            c5 = c.reshape(c_in, kh, kw, c_in, kh, kw)
            c = c5.diagonal(dim1=2, dim2=5).mean(-1).reshape(c_in * kh, c_in * kh)
        if self.damping > 0:
            scale = float(c.diagonal().mean())
            c = c + (self.damping * (scale if scale > 0 else 1.0)) * torch.eye(c.shape[0], dtype=c.dtype)
        return c

    def summary(self) -> dict:
        """What a compression record and a results row say of this calibration: images, split, augmentation,
        damping, seconds."""
        return {
            "images": self.images,
            "split": self.split,
            "augment": self.augment,
            "damping": self.damping,
            "center": self.center,
            "seconds": round(self.seconds, 3),
        }

    def check(self, model: nn.Module, names: Iterable[str]) -> None:
        """Raise a one-line ConfigError unless every layer in ``names`` was calibrated on a layer of its shape."""
        modules = dict(model.named_modules())
        for name in names:
            shape = tuple(layer_weight(modules[name]).shape)
            if name not in self.shapes:
                raise ConfigError(
                    f"the calibration has no layer {name!r}: it was made for another model; run calibrate() on "
                    "this model"
                )
            if self.shapes[name] != shape:
                raise ConfigError(
                    f"the calibration was made for another model: layer {name!r} had weight shape "
                    f"{self.shapes[name]}, this model's has {shape}; run calibrate() on this model"
                )


class _MomentHook:
    """Forward pre-hook accumulating ``sum x x^T`` of a layer's (subsampled) inputs in float64."""

    def __init__(self, module: nn.Module, quota: int, total_images: int, generator: torch.Generator):
        self.module = module
        d = input_dim(module)
        self.sum = torch.zeros(d, d, dtype=torch.float64)
        self.vec = torch.zeros(d, dtype=torch.float64)
        self.count = 0
        self.quota = quota  # input vectors wanted over the whole calibration
        self.total_images = total_images
        self.images = 0
        self.gen = generator

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if is_linear(m):
            return x.reshape(-1, x.shape[-1])
        return sample_patches(m, x, self._wanted(x), self.gen)

    def _wanted(self, x: torch.Tensor) -> int:
        """Vectors to take from this batch, so that the quota is spread evenly over the calibration images."""
        after = self.images + x.shape[0]
        return max(1, math.ceil(self.quota * after / self.total_images) - self.count)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        rows = self._rows(x)
        if is_linear(self.module) and rows.shape[0] > self._wanted(x):
            keep = torch.randperm(rows.shape[0], generator=self.gen)[: self._wanted(x)]
            rows = rows[keep.to(rows.device)]
        rows = rows.float()
        self.sum += (rows.T @ rows).to("cpu", torch.float64)
        self.vec += rows.sum(0).to("cpu", torch.float64)
        self.count += rows.shape[0]
        self.images += x.shape[0]


def sample_patches(conv: nn.Conv2d, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` unfolded input patches of ``conv`` at random output positions of the batch ``x`` (B, C, H, W).

    Returns shape (k', C*kh*kw), ``k' = min(k, B*Ho*Wo)``, ordered like ``F.unfold`` (channel, row, column).
    """
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    if conv.padding == "same":  # as torch pads it: half of the total before, the rest (one more when odd) after
        top, left = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        pads = (left, dw * (kw - 1) - left, top, dh * (kh - 1) - top)
    elif conv.padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        ph, pw = conv.padding
        pads = (pw, pw, ph, ph)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, pads, mode=mode) if any(pads) else x
    b, c, hp, wp = xp.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    total = b * ho * wo
    every = k >= total
    flat = torch.arange(total) if every else torch.randperm(total, generator=gen)[:k]
    flat = flat.to(x.device)
    bi, pos = flat // (ho * wo), flat % (ho * wo)
    oy, ox = pos // wo, pos % wo
    rows = oy[:, None] * sh + torch.arange(kh, device=x.device) * dh  # (k, kh)
    cols = ox[:, None] * sw + torch.arange(kw, device=x.device) * dw  # (k, kw)
    patches = xp.permute(0, 2, 3, 1)[bi[:, None, None], rows[:, :, None], cols[:, None, :]]  # (k, kh, kw, C)
    return patches.permute(0, 3, 1, 2).reshape(flat.numel(), c * kh * kw)


def calibrate(
    model: nn.Module,
    data: CalibrationData,
    images: int = CALIBRATION_IMAGES,
    *,
    batch_size: int = 256,
    layers: Iterable[str] | None = None,
    samples: int | None = None,
    seed: int = 0,
    augment: bool = False,
    damping: float = DAMPING,
    device: str | torch.device | None = None,
) -> Calibration:
    """Input second moments of a model's layers, from forward passes only (no gradient, no weight change).

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (its mode is restored), on ``device``.
    data : Dataset, Loader, iterable or Tensor
        Calibration inputs, see :func:`calibration_batches`; a Dataset gives training images only.
    images : int
        Number of calibration inputs.
    batch_size : int
        Batch size for a Dataset or Tensor.
    layers : iterable of str, optional
        Names of the layers to calibrate. Default: every Conv2d with ``groups=1`` and every Linear.
    samples : int, optional
        Input vectors kept per layer. Default: ``max(MIN_SAMPLES, SAMPLES_PER_DIM * d)``; positions beyond it are
        subsampled at random.
    seed : int
        Seeds the choice of images (Dataset) and of subsampled positions: the result is deterministic.
    augment : bool
        Apply the dataset's training augmentation.
    damping : float
        Relative ridge on the moments when they are used, see :class:`Calibration`.
    device : str or torch.device, optional
        Where to run. Default: where the model's parameters are.

    Returns
    -------
    Calibration

    Raises
    ------
    ConfigError
        Data that does not fit the model, or a layer name that is not a Conv2d/Linear of the model. A warning
        says which layers saw fewer input vectors than their input dimension (their moment is singular and
        :func:`smoothcompress.compress` damps it) and how many images would be needed.
    """
    start = time.perf_counter()
    if not damping >= 0:
        raise ConfigError(f"damping must be >= 0, got {damping}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if _is_calibratable(m)]
    else:
        names = list(layers)
        bad = [n for n in names if n not in modules or not _is_calibratable(modules[n])]
        if bad:
            raise ConfigError(f"not a Conv2d (groups=1) or Linear layer of the model: {', '.join(map(repr, bad))}")
    if not names:
        raise ConfigError("the model has no Conv2d or Linear layer to calibrate")
    gen = torch.Generator().manual_seed(int(seed) + 1)
    source = describe_source(data, images)  # a source with fewer images: the quota spreads over those it has
    hooks = {}
    for n in names:
        d = input_dim(modules[n])
        quota = int(samples) if samples is not None else max(MIN_SAMPLES, SAMPLES_PER_DIM * d)
        hooks[n] = _MomentHook(modules[n], quota, source["images"], gen)
    handles = [modules[n].register_forward_pre_hook(h) for n, h in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        batches = calibration_batches(data, images, batch_size, seed=seed, augment=augment, device=device)
        seen = run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    short = {n: (h.count, input_dim(h.module), h.quota) for n, h in hooks.items() if h.count < input_dim(h.module)}
    if short:
        what = "saw fewer input vectors than their input dimension"
        warn_short_layers(short, seen, int(images), what, "their moments are singular and will be damped")
    return Calibration(
        moments={n: h.sum / max(h.count, 1) for n, h in hooks.items()},
        means={n: h.vec / max(h.count, 1) for n, h in hooks.items()},
        samples={n: h.count for n, h in hooks.items()},
        shapes={n: tuple(layer_weight(modules[n]).shape) for n in names},
        images=seen,
        split=source["split"],
        augment=bool(augment),
        seconds=time.perf_counter() - start,
        damping=float(damping),
    )


def warn_short_layers(
    short: dict[str, tuple[int, int, int]], seen: int, asked: int, what: str, effect: str, stacklevel: int = 3
) -> None:
    """Warn that the layers of ``short`` had fewer calibration vectors than unknowns, and say what would help.

    The advice is for the worst layer (fewest vectors per dimension): more samples when its cap is below its
    dimension, else more images when the source gave all that was asked, else that the source is too small.

    Parameters
    ----------
    short : dict of str to (int, int, int)
        Layer name -> (input vectors seen, dimension they should span, input vectors the layer keeps at most).
    seen, asked : int
        Calibration inputs (images) passed forward, and asked for: fewer seen than asked means the source ran out.
    what, effect : str
        What fell short (``"saw fewer input vectors than their input dimension"``) and what follows from it.
    stacklevel : int
        As for :func:`warnings.warn`, counted from the caller of this function's caller.
    """
    worst = max(short, key=lambda n: short[n][1] / max(short[n][0], 1))
    count, d, cap = short[worst]
    need = math.ceil(d * max(seen, 1) / max(count, 1))
    if cap < d:
        advice = f"Pass samples >= {d} (each layer keeps at most {cap} input vectors)."
    elif seen >= asked:
        advice = f"Pass images >= {need}."
    else:
        advice = f"The calibration source has {seen} images, fewer than the {need} needed."
    warnings.warn(
        f"{len(short)} layer(s) {what} (e.g. {worst!r}: {count} for d={d}); {effect}. {advice}",
        stacklevel=stacklevel,
    )


# ---------------------------------------------------------------------------------------------------------
# BatchNorm statistics


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


def recalibrate_bn(
    model: nn.Module,
    data: CalibrationData,
    images: int = CALIBRATION_IMAGES,
    batch_size: int = 256,
    *,
    reference: nn.Module | None = None,
    seed: int = 0,
    augment: bool | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance by forward passes only.

    Each BatchNorm's statistics are averaged cumulatively (equal weight per batch, as with ``momentum=None``) over
    ``images`` calibration inputs, with the BatchNorms in training mode and every other module in eval mode (no
    dropout). No parameter changes and no gradient is taken; only the buffers ``running_mean``, ``running_var``
    and ``num_batches_tracked`` do. The model's train/eval modes and each BatchNorm's momentum are restored. Use
    it after :func:`smoothcompress.compress` or :func:`smoothcompress.prune`, whose layers no longer produce the
    statistics the BatchNorms were trained with.

    With a ``reference`` (the model before compression), only the *change* that compression made is estimated:
    both models see the same batches, and a BatchNorm present in both with the same shape gets
    ``mean = mean_ref + (m - m_ref)`` and ``var = var_ref * v / v_ref``, where ``mean_ref``/``var_ref`` are the
    reference's running statistics and ``m, v`` / ``m_ref, v_ref`` the batch statistics of the two models on the
    calibration images. What a few thousand images cannot tell (their sampling noise, and how the training-time
    running averages differ from any fixed set of images) then cancels: a model identical to its reference is
    left exactly as it is. Other BatchNorms (e.g. those that filter pruning narrowed) get the plain estimate.

    Parameters
    ----------
    model : nn.Module
        Changed in place and returned.
    data : Dataset, Loader, iterable or Tensor
        See :func:`calibration_batches`; a Dataset gives training images only, never its test split.
    images, batch_size : int
        Calibration inputs and the batch size for a Dataset or Tensor. Batches of one input are skipped (a
        BatchNorm cannot estimate a variance from one value per channel).
    reference : nn.Module, optional
        The uncompressed model ``model`` was made from; it is not changed.
    seed : int
        Which training images a Dataset gives, and their augmentation: the result is deterministic given the data.
    augment : bool, optional
        Apply the dataset's training augmentation. Default: for a Dataset, whether it trains with augmentation
        (the statistics the BatchNorms were trained to expect are those of augmented batches).
    device : str or torch.device, optional
        Where to run. Default: where the model's parameters are.

    Returns
    -------
    nn.Module
        ``model``. A model without BatchNorm is returned unchanged, with a warning.

    Raises
    ------
    ConfigError
        Data that does not fit the model, or that comes in batches of a single input only; the statistics are then
        left as they were.
    """
    bns = _batchnorms(model)
    if not bns:
        warnings.warn("recalibrate_bn: the model has no BatchNorm with running statistics; nothing to do", stacklevel=2)
        return model
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    if augment is None:
        augment = isinstance(data, CalibrationSource) and data.augment

    def batches():
        given = skipped = 0
        for x in calibration_batches(data, images, batch_size, seed=seed, augment=augment, device=device):
            if as_batch(x).batch_size > 1:
                given += 1
                yield x
            else:
                skipped += 1
        if skipped and not given:
            more = "pass images >= 2" if images < 2 else "give batches of 2 inputs or more (batch_size >= 2)"
            raise ConfigError(
                "re-estimating BatchNorm statistics skips batches of a single input, and the calibration data gave "
                f"only such batches: {more}"
            )

    _estimate_bn(model, bns, batches())
    if reference is not None:
        ref = _batchnorms(reference)
        ref_copy = copy.deepcopy(reference)
        ref_est = _batchnorms(ref_copy)
        _estimate_bn(ref_copy, ref_est, batches())
        with torch.no_grad():
            for name, bn in bns.items():
                r, e = ref.get(name), ref_est.get(name)
                if r is None or r.running_mean.shape != bn.running_mean.shape:
                    continue
                bn.running_mean.copy_(r.running_mean + (bn.running_mean - e.running_mean))
                bn.running_var.copy_(r.running_var * bn.running_var / e.running_var.clamp_min(bn.eps))
    return model


def _estimate_bn(model: nn.Module, bns: dict[str, nn.modules.batchnorm._BatchNorm], batches: Iterable[Batch]) -> None:
    """Set ``bns``' running statistics to their cumulative averages over ``batches``; restore modes and momenta.

    On failure the statistics are left as they were and the error is raised.
    """
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns.values()}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns.values()}
    ok = False
    try:
        model.eval()
        for m in bns.values():
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        run_batches(model, batches)
        ok = True
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in momenta.items():
            m.momentum = momentum
        if not ok:  # lose nothing: a failed recalibration leaves the statistics as they were
            for m, (mean, var, n) in saved.items():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)

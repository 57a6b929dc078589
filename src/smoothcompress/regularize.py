"""Smoothness penalties on weights: nuclear norm, first- and second-order finite differences.

Training with one of these penalties makes the weights smooth, and so compressible by truncated SVD without
fine-tuning (Runkel et al., "Smooth Model Compression without Fine-Tuning", arXiv 2505.24469).

Definitions
-----------
A Conv2d weight ``W`` has shape ``(C_out, C_in, kh, kw)``; a Linear weight ``(out, in)`` is the case
``kh = kw = 1``. The named axes are ``"out"``, ``"in"``, ``"kh"`` and ``"kw"``. Linear-like modules that store
their weight transposed (``transformers``' ``Conv1D``, see :mod:`smoothcompress.layers`) are read as ``(out, in)``.

* ``"nuclear"``: ``||mat(W)||_*``, the sum of the singular values of ``mat(W) = W.reshape(C_out, -1)``, the
  same matricization that the SVD compression truncates.
* ``"first"``: ``sum over axes of sum |W[i+1] - W[i]|^p`` (forward differences between neighbouring slices).
* ``"second"``: the same with ``W[i+1] - 2 W[i] + W[i-1]``.

``p = 2`` (squared differences) is the default, ``p = 1`` is total variation; any real ``p >= 1`` works.
:func:`penalty` is this raw definition for one tensor, unnormalised. For the unit ramp
``W[o, i, :, :] = o + i`` of shape ``(8, 6, 3, 3)``: first = 7*6*9 + 8*5*9 = 738, second = 0.

Normalisation (what :class:`Smoothness` sums)
---------------------------------------------
Each layer contributes ``||W||_F^2 * rho(W)`` (:func:`normalized_penalty`): its squared Frobenius norm, as in
weight decay, times a dimensionless, scale-free roughness ``rho`` (:func:`roughness`):

* derivative kinds: ``rho = sum |dW|^p / sum |W|^p``; 0 for a weight that is constant (``first``) or affine
  (``second``) along the chosen axes. For ``p = 2`` the layer term equals the raw :func:`penalty`.
* nuclear: ``rho = ||mat(W)||_* / (sqrt(min(m, n)) * ||W||_F)`` for ``mat(W)`` of shape ``(m, n)``, in
  ``[1/sqrt(min(m, n)), 1]``; the layer term is ``||W||_F * ||mat(W)||_* / sqrt(min(m, n))``.

Every layer term is homogeneous of degree 2 in ``W``, like weight decay, so ``weight`` lives on weight decay's
scale or below.

``scale_free=True`` sums the roughness ``rho`` alone instead (``||dW||^2 / ||W||^2`` for ``p = 2``): invariant
to the scale of each weight, as a conv followed by BatchNorm is, so the penalty cannot be lowered by shrinking a
weight that BatchNorm rescales anyway. Its gradient is orthogonal to ``W`` and scales as ``1 / ||W||``.
A grouped conv then contributes the roughness of each of its ``g`` blocks (``g`` terms, where the default sums
``||W_b||^2 rho_b`` over blocks, i.e. the layer's own term).

Grouped and depthwise convs
---------------------------
A conv with ``groups = g`` is penalised per group: its weight is read as ``g`` independent blocks of shape
``(C_out/g, C_in/g, kh, kw)`` (differences never cross a group boundary; the nuclear norm is that of each block's
``mat``), and the layer's term is the sum over its blocks. A depthwise conv's blocks are ``1 x 1 x kh x kw``: only
the kernel axes smooth it, and its nuclear term reduces to weight decay (``rho = 1``).

Precision
---------
Penalties are computed in float32 (float64 for float64 weights; float16/bfloat16 weights are upcast) with autocast
disabled around the SVD. The nuclear term's backward is ``U diag(g) V^T`` (the backward of ``svdvals``, no division
by singular-value gaps).

Schedules for the nuclear norm
------------------------------
* ``every=k``: the penalty is added on every k-th optimizer step only, scaled by ``k``; other steps return a zero.
* ``proximal=True``: no term in the loss. After the optimizer step, :meth:`Smoothness.after_step` applies the
  proximal map of the nuclear term with its factors frozen at the current ``W``, which is
  ``alpha * ||W||_* + beta / 2 * ||W||_F^2`` with ``alpha = weight * ||W||_F / sqrt(k)`` and
  ``beta = weight * ||W||_* / (||W||_F * sqrt(k))`` (``k = min(m, n)``): per block,
  ``W <- U max(S - eta * alpha, 0) V^T / (1 + eta * beta)`` with ``eta = lr * every``. A block is never
  thresholded to zero while ``lr * every * weight < 1``. Combine with ``every=k`` to threshold every k-th step.
* ``refresh=k`` (lagged polar factor): the gradient of ``||mat(W)||_*`` is the polar factor ``P = U V^T``. It is
  computed every k-th step and reused in between as a fixed linear term: the layer term becomes
  ``||W||_F * <P, mat(W)> / sqrt(min(m, n))``. ``<P, mat(W)> <= ||mat(W)||_*`` (``||P||_2 <= 1``), with equality
  on the steps where ``P`` is fresh, so the value and the gradient are exact there; between refreshes a step costs
  one elementwise product per weight. Trained Rank Pruning's "decouple period" is the same idea.
* ``target_rate=q`` (rank-targeted, "tail" nuclear norm): only the singular values that truncation at the
  parameter rate ``q`` would drop are penalised. Every ``refresh``-th step the ranks ``r_l`` that
  :func:`smoothcompress.compress` would give each layer at rate ``q`` (global allocation, channel scheme) are
  recomputed on the current weights, and ``P`` becomes the tail polar factor ``sum_{i > r_l} u_i v_i^T``, so the
  layer term is ``||W||_F * sum_{i > r_l} s_i / sqrt(min(m, n))`` on refresh steps. Layers the allocation keeps
  dense (or cannot factorize) are not penalised. Always uses the lagged form; needs ``polar="svd"``.
* ``polar="newton-schulz"``: ``P`` from five quintic Newton-Schulz iterations on ``mat(W) / ||W||_F``
  (matrix products only, no SVD; the coefficients of the Muon optimizer). Inexact: ``P = U f(S) V^T`` with
  ``f`` in about ``[0.68, 1.2]`` for singular values above ``2e-3 ||W||_F``, and smaller below that (``f = 0.47``
  at ``1e-3``, ``0.05`` at ``1e-4``): the smallest singular values, the ones truncation removes, are pushed less
  than by the exact gradient. Combines with ``refresh``.

Which schedule trains to the same model as the every-step SVD, and what each costs, is measured by
``benchmarks/bench_nuclear_schedule.py`` and ``benchmarks/bench_regularize.py`` (see ``docs/design.md``).

Layer selection (``include``/``exclude``) follows :mod:`smoothcompress.selection`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from smoothcompress.errors import ConfigError
from smoothcompress.layers import is_linear, linear_spec, linear_weight
from smoothcompress.selection import Entries, as_entries, select_layers, unwrap

__all__ = ["KINDS", "AXES", "POLARS", "penalty", "normalized_penalty", "roughness", "polar_factor", "Smoothness"]

Kind = Literal["nuclear", "first", "second"]
KINDS: tuple[str, ...] = ("nuclear", "first", "second")
"""The penalty kinds."""

AXES: dict[str, int] = {"out": 0, "in": 1, "kh": 2, "kw": 3}
"""Axis names and their position in a ``(C_out, C_in, kh, kw)`` weight."""

POLARS: tuple[str, ...] = ("svd", "newton-schulz")
"""How the nuclear norm's gradient direction ``U V^T`` is computed: exactly, or by Newton-Schulz iterations."""

# Quintic Newton-Schulz coefficients and step count of the Muon optimizer (Jordan et al. 2024): chosen to raise
# small singular values fast (slope 3.4 at 0) rather than to converge, so 5 steps suffice from ``W / ||W||_F``.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_NS_STEPS = 5

_ORDER = {"first": 1, "second": 2}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------
# Argument checks


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown penalty kind {kind!r}; choose one of {', '.join(map(repr, KINDS))}")
    return kind


def _check_axes(axes: str | Iterable[str]) -> tuple[int, ...]:
    """Axis names -> sorted dims in the block layout ``(B, out, in, kh, kw)`` (hence the +1)."""
    names = (axes,) if isinstance(axes, str) else tuple(axes) if isinstance(axes, Iterable) else None
    valid = ", ".join(map(repr, AXES))
    if not names:
        raise ConfigError(f"axes must be a non-empty sequence of axis names from {valid}, got {axes!r}")
    bad = [a for a in names if a not in AXES]
    if bad:
        raise ConfigError(f"unknown axis name(s) {bad}; valid axes are {valid}")
    if len(set(names)) != len(names):
        raise ConfigError(f"axes must not repeat, got {names}")
    return tuple(sorted(AXES[a] + 1 for a in names))


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or p < 1:
        raise ConfigError(f"p must be a real number >= 1 (2: squared differences, 1: total variation), got {p!r}")
    return float(p)


def _check_count(value: int, name: str, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 ({meaning}), got {value!r}")
    return int(value)


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"the penalty weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


# ---------------------------------------------------------------------------------------------------------
# Functional core. Every function works on a stack of "blocks" of shape (B, out, in, kh, kw): the groups of one
# layer, or equal-shape layers batched together.


def _as_blocks(weight: Tensor, groups: int = 1) -> Tensor:
    """View a weight as ``(groups, out/groups, in_per_group, kh, kw)`` blocks.

    Parameters
    ----------
    weight : Tensor
        ``(out, in)`` (Linear) or ``(C_out, C_in/groups, kh, kw)`` (Conv2d).
    groups : int
        Conv groups; ``C_out`` must be divisible by it.
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise ConfigError(f"weight must be a floating-point tensor, got {type(weight).__name__}")
    if weight.ndim == 2:
        weight = weight[:, :, None, None]
    elif weight.ndim != 4:
        raise ConfigError(f"weight must be 2-D (out, in) or 4-D (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    if groups < 1 or weight.shape[0] % groups:
        raise ConfigError(f"groups={groups} does not divide C_out={weight.shape[0]}")
    if weight.dtype in _LOW_PRECISION:
        weight = weight.float()
    return weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])


def _power(d: Tensor, p: float) -> Tensor:
    if p == 2.0:
        return d * d
    if p == 1.0:
        return d.abs()
    return d.abs().pow(p)


def _diff_sums(blocks: Tensor, order: int, dims: Sequence[int], p: float) -> Tensor:
    """Per block, the sum of ``|order-th difference|^p`` along each of ``dims``: ``(B,)``.

    Axes shorter than ``order + 1`` contribute nothing.
    """
    total = blocks.new_zeros(blocks.shape[0])
    for dim in dims:
        if blocks.shape[dim] > order:
            total = total + _power(torch.diff(blocks, n=order, dim=dim), p).flatten(1).sum(1)
    return total


def _thin_svd(mats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``mats = U diag(S) Vh`` of ``(B, m, n)``, through a QR of the long side when ``max/min >= 2``.

    Returns
    -------
    U : Tensor
        ``(B, m, k)``, ``k = min(m, n)``.
    S : Tensor
        ``(B, k)``, descending.
    Vh : Tensor
        ``(B, k, n)``.
    """
    m, n = mats.shape[-2:]
    if n >= 2 * m:  # mats^T = Q R, R = Ur S Vrh  =>  mats = Vrh^T S (Q Ur)^T
        q, r = torch.linalg.qr(mats.mT)
        ur, s, vrh = torch.linalg.svd(r)
        return vrh.mT, s, (q @ ur).mT
    if m >= 2 * n:  # mats = Q R, R = Ur S Vrh  =>  mats = (Q Ur) S Vrh
        q, r = torch.linalg.qr(mats)
        ur, s, vrh = torch.linalg.svd(r)
        return q @ ur, s, vrh
    return torch.linalg.svd(mats, full_matrices=False)


def _singular_values_only(mats: Tensor) -> Tensor:
    m, n = mats.shape[-2:]
    if max(m, n) >= 2 * min(m, n):
        mats = torch.linalg.qr(mats.mT if n > m else mats, mode="r")[1]
    return torch.linalg.svdvals(mats)


class _SingularValues(torch.autograd.Function):
    """Singular values ``(B, k)`` of ``(B, m, n)`` with the backward of ``svdvals``: ``U diag(g) Vh``."""

    @staticmethod
    def forward(ctx, mats: Tensor) -> Tensor:
        u, s, vh = _thin_svd(mats)
        ctx.save_for_backward(u, vh)
        return s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_s: Tensor) -> Tensor:
        u, vh = ctx.saved_tensors
        return (u * grad_s[:, None, :]) @ vh


def _svdvals(blocks: Tensor) -> Tensor:
    """Singular values ``(B, min(m, n))`` of each block's ``mat`` ``(m, n)``, in float32 or wider, autocast off."""
    mats = blocks.flatten(2)
    with torch.autocast(device_type=mats.device.type, enabled=False):
        mats = mats.float() if mats.dtype in _LOW_PRECISION else mats
        if mats.requires_grad and torch.is_grad_enabled():
            return _SingularValues.apply(mats)
        return _singular_values_only(mats)


def _newton_schulz(mats: Tensor) -> Tensor:
    """Approximate polar factor of each ``(m, n)`` matrix of ``(B, m, n)`` by quintic Newton-Schulz iterations."""
    a, b, c = _NS_COEFFS
    wide = mats.shape[-2] <= mats.shape[-1]
    x = mats if wide else mats.mT  # iterate on the (small x large) side: x @ x^T is the smaller Gram matrix
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    for _ in range(_NS_STEPS):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


def polar_factor(mats: Tensor, method: str = "svd") -> Tensor:
    """The polar factor ``U V^T`` of each matrix: the gradient of the nuclear norm.

    Parameters
    ----------
    mats : Tensor
        ``(B, m, n)``; float16/bfloat16 is computed in float32.
    method : {"svd", "newton-schulz"}
        Exact (thin SVD), or five quintic Newton-Schulz iterations (matrix products only; inexact, see the module
        docstring).

    Returns
    -------
    Tensor
        ``(B, m, n)``, float32 or wider, without gradient.

    Raises
    ------
    ConfigError
        An unknown method or a tensor that is not 3-dimensional.
    """
    if method not in POLARS:
        raise ConfigError(f"unknown polar method {method!r}; choose one of {', '.join(POLARS)}")
    if mats.ndim != 3:
        raise ConfigError(f"mats must be (B, m, n), got shape {tuple(mats.shape)}")
    with torch.no_grad(), torch.autocast(device_type=mats.device.type, enabled=False):
        mats = mats.detach().float() if mats.dtype in _LOW_PRECISION else mats.detach()
        if method == "newton-schulz":
            return _newton_schulz(mats)
        u, _, vh = _thin_svd(mats)
        return u @ vh


def _lagged_terms(blocks: Tensor, polar: Tensor) -> Tensor:
    """Each block's nuclear term with a fixed polar factor: ``||W||_F * <P, mat W> / sqrt(k)``, ``(B,)``."""
    mats = blocks.flatten(2)
    with torch.autocast(device_type=mats.device.type, enabled=False):
        mats = mats.float() if mats.dtype in _LOW_PRECISION else mats
        fro = torch.linalg.vector_norm(mats, dim=(1, 2))
        return fro * (polar * mats).sum((1, 2)) / math.sqrt(min(mats.shape[-2:]))


def _raw_blocks(blocks: Tensor, kind: str, dims: Sequence[int], p: float) -> Tensor:
    """The unnormalised penalty of each block, ``(B,)``."""
    if kind == "nuclear":
        return _svdvals(blocks).sum(-1)
    return _diff_sums(blocks, _ORDER[kind], dims, p)


def _terms(blocks: Tensor, kind: str, dims: Sequence[int], p: float, scale_free: bool = False) -> Tensor:
    """Each block's layer term ``||W||_F^2 * rho`` (or ``rho`` alone when ``scale_free``), ``(B,)``."""
    tiny = torch.finfo(torch.float32).tiny
    if kind == "nuclear":
        s = _svdvals(blocks)
        fro = torch.linalg.vector_norm(blocks.flatten(1).to(s.dtype), dim=1)
        if scale_free:
            return s.sum(-1) / (math.sqrt(s.shape[-1]) * fro.clamp_min(tiny))
        return s.sum(-1) * fro / math.sqrt(s.shape[-1])
    sums = _diff_sums(blocks, _ORDER[kind], dims, p)
    if p == 2 and not scale_free:
        return sums
    flat = blocks.flatten(1)
    rho = sums / _power(flat, p).sum(1).clamp_min(tiny)
    return rho if scale_free else rho * (flat * flat).sum(1)


def penalty(weight: Tensor, kind: Kind, axes: str | Sequence[str] = ("out", "in"), p: float = 2) -> Tensor:
    """The raw, unnormalised smoothness penalty of one weight tensor.

    Parameters
    ----------
    weight : Tensor
        ``(out, in)`` (Linear) or ``(C_out, C_in, kh, kw)`` (Conv2d); float16/bfloat16 is computed in float32.
    kind : {"nuclear", "first", "second"}
        Sum of the singular values of ``weight.reshape(C_out, -1)``, or the sum of ``|difference|^p`` of first
        or second order along ``axes``.
    axes : sequence of {"out", "in", "kh", "kw"}
        Axes along which differences are taken (ignored by "nuclear"). Axes of length 1 (``kh``, ``kw`` of a
        Linear) contribute nothing.
    p : float
        Exponent >= 1 on each difference: 2 (squared, default) or 1 (total variation).

    Returns
    -------
    Tensor
        0-dim, differentiable, float32 (float64 for a float64 weight).

    Examples
    --------
    >>> o, i = torch.meshgrid(torch.arange(8.0), torch.arange(6.0), indexing="ij")
    >>> ramp = (o + i)[:, :, None, None].expand(8, 6, 3, 3)
    >>> float(penalty(ramp, "first")), float(penalty(ramp, "second"))
    (738.0, 0.0)
    """
    kind, dims, p = _check_kind(kind), _check_axes(axes), _check_p(p)
    return _raw_blocks(_as_blocks(weight), kind, dims, p)[0]


def normalized_penalty(
    weight: Tensor, kind: Kind, axes: str | Sequence[str] = ("out", "in"), p: float = 2, groups: int = 1
) -> Tensor:
    """One layer's term in :class:`Smoothness`: ``||W||_F^2 * roughness(W)``, summed over conv groups.

    Parameters
    ----------
    weight : Tensor
        ``(out, in)`` or ``(C_out, C_in/groups, kh, kw)``.
    kind, axes, p
        As in :func:`penalty`.
    groups : int
        Conv groups: the weight is ``groups`` independent blocks ``(C_out/groups, C_in/groups, kh, kw)``.

    Returns
    -------
    Tensor
        0-dim. Equal to :func:`penalty` for a derivative kind with ``p = 2`` and ``groups = 1``; for nuclear,
        ``||W||_F * ||mat W||_* / sqrt(min(m, n))``.
    """
    kind, dims, p = _check_kind(kind), _check_axes(axes), _check_p(p)
    return _terms(_as_blocks(weight, groups), kind, dims, p).sum()


def roughness(
    weight: Tensor, kind: Kind, axes: str | Sequence[str] = ("out", "in"), p: float = 2, groups: int = 1
) -> Tensor:
    """The dimensionless, scale-free roughness ``rho`` of one weight: ``normalized_penalty / ||W||_F^2``.

    ``sum |diff|^p / sum |W|^p`` (first, second) or ``||mat W||_* / (sqrt(min(m, n)) ||W||_F)`` (nuclear, in
    ``(0, 1]``); with groups, the mean over blocks weighted by their squared norms. Independent of the layer's
    size and scale, for reports and plots.

    Parameters
    ----------
    weight, kind, axes, p, groups
        As in :func:`normalized_penalty`.

    Returns
    -------
    Tensor
        0-dim.
    """
    kind, dims, p = _check_kind(kind), _check_axes(axes), _check_p(p)
    blocks = _as_blocks(weight, groups)
    if blocks.shape[0] == 1:
        return _terms(blocks, kind, dims, p, scale_free=True)[0]
    sq = blocks.flatten(1).square().sum()
    return _terms(blocks, kind, dims, p).sum() / sq.clamp_min(torch.finfo(torch.float32).tiny)


def _nuclear_prox_(blocks: Tensor, eta_weight: float) -> None:
    """In place, per block: ``W <- U max(S - eta*alpha, 0) V^T / (1 + eta*beta)`` (see the module docstring).

    Parameters
    ----------
    blocks : Tensor
        ``(B, out, in, kh, kw)`` or ``(B, out, in)``, a view of the weight (modified in place).
    eta_weight : float
        ``lr * every * weight``.
    """
    mats = blocks.flatten(2)
    with torch.autocast(device_type=mats.device.type, enabled=False):
        u, s, vh = _thin_svd(mats.float() if mats.dtype in _LOW_PRECISION else mats)
    root_k = math.sqrt(s.shape[-1])
    fro = s.norm(dim=1).clamp_min(torch.finfo(s.dtype).tiny)
    tau = eta_weight * fro / root_k
    shrink = 1 + eta_weight * s.sum(1) / (fro * root_k)
    s_new = (s - tau[:, None]).clamp_min(0) / shrink[:, None]
    blocks.copy_(((u * s_new[:, None, :]) @ vh).reshape(blocks.shape))


# ---------------------------------------------------------------------------------------------------------
# Layer types: how a module's weight is read as blocks.


class LayerType:
    """How one layer type's weight is read as ``(groups, out, in, kh, kw)`` blocks."""

    module_type: type[nn.Module] = nn.Module

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is of this layer type."""
        return isinstance(module, self.module_type)

    def weight(self, module: nn.Module) -> Tensor:
        """The weight as ``(out, in, ...)``: the parameter, or a view of it (writing to it writes the parameter)."""
        return module.weight

    def groups(self, module: nn.Module) -> int:
        """Number of independent blocks of the weight."""
        return 1

    def blocks(self, module: nn.Module) -> Tensor:
        """The weight as blocks ``(groups, out/groups, in_per_group, kh, kw)``; a view of the parameter."""
        return _as_blocks(self.weight(module), self.groups(module))


class LinearType(LayerType):
    """``nn.Linear`` (any subclass) and Linear-like modules (:mod:`smoothcompress.layers`, e.g. ``transformers``'
    ``Conv1D``): weight read as ``(out, in)``, one block ``(1, out, in, 1, 1)``."""

    module_type = nn.Linear

    def matches(self, module: nn.Module) -> bool:
        return is_linear(module)

    def weight(self, module: nn.Module) -> Tensor:
        return linear_weight(module) if linear_spec(module) is not None else module.weight


class Conv2dType(LayerType):
    """``nn.Conv2d``: weight ``(C_out, C_in/g, kh, kw)``, ``g`` blocks ``(C_out/g, C_in/g, kh, kw)``."""

    module_type = nn.Conv2d

    def groups(self, module: nn.Module) -> int:
        return int(module.groups)


LAYER_TYPES: tuple[LayerType, ...] = (Conv2dType(), LinearType())
"""The penalised layer types, tried in order."""


def _layer_type(module: nn.Module) -> LayerType | None:
    kind = next((t for t in LAYER_TYPES if t.matches(module)), None)
    spec = linear_spec(module) if kind is not None else None
    weight = getattr(module, spec.weight if spec is not None else "weight", None)
    if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter):
        return None
    return kind


def _penalised(name: str, module: nn.Module) -> bool:
    return _layer_type(module) is not None


# ---------------------------------------------------------------------------------------------------------
# The model-level wrapper


class Smoothness:
    """A smoothness regularizer for a whole model: ``loss = loss + reg(model)``.

    ``reg(model)`` is ``weight * sum over penalised layers of their term`` (:func:`normalized_penalty`,
    ``||W||_F^2 * roughness``; see the module docstring), a differentiable 0-dim tensor on the model's device,
    float32 unless the weights are float64. For "nuclear", layers of equal block shape share one batched SVD.

    Parameters
    ----------
    kind : {"nuclear", "first", "second"}
        The penalty.
    weight : float
        Its weight (>= 0). A plain attribute: a trainer may change ``reg.weight`` every step (warm-up). With
        ``weight == 0`` the call returns a zero without touching the weights.
    axes : sequence of {"out", "in", "kh", "kw"}
        Difference axes for "first" and "second" (ignored by "nuclear"). Default: output and input channels.
    p : float
        Exponent >= 1 on the differences: 2 (default) or 1 (total variation).
    include : str, type or sequence of them, optional
        Penalise only the Conv2d/Linear layers that match one entry: a dotted name, an ``fnmatch`` pattern
        (``"layers.3.*"``, ``"*conv2"``), a container (``"layers.3"``: every layer inside), ``"<first>"`` or
        ``"<last>"`` (the first or last Conv2d/Linear in module order, usually the stem and the classifier), or a
        module type (``nn.Conv2d``); see :mod:`smoothcompress.selection`. Default: every Conv2d and Linear.
    exclude : str, type or sequence of them, optional
        Leave out the layers that match one entry, e.g. ``exclude=("<first>", "<last>")``.
    every : int
        Add the penalty on every ``every``-th optimizer step only, scaled by ``every`` (or threshold every
        ``every``-th step when ``proximal``). Each call counts one optimizer step (call it once per step), and so
        does :meth:`after_step` when no call came before it (a proximal penalty in a loop that never calls it).
    proximal : bool
        "nuclear" only: instead of a loss term, apply singular-value soft-thresholding in :meth:`after_step`.
    refresh : int
        "nuclear" only, not with ``proximal``: recompute the polar factor ``U V^T`` of each weight every
        ``refresh``-th step and reuse it in between as a fixed linear term (module docstring). 1: every step.
    polar : {"svd", "newton-schulz"}
        "nuclear" only, not with ``proximal``: how ``U V^T`` is computed. "svd" with ``refresh=1`` is the exact
        penalty.
    scale_free : bool
        Sum each layer's scale-free roughness ``rho`` instead of ``||W||_F^2 * rho`` (module docstring). Not with
        ``proximal``, ``refresh > 1`` or an inexact ``polar``.
    target_rate : float, optional
        "nuclear" only, not with ``proximal`` or an inexact ``polar``: penalise only the singular values that
        truncation at this parameter rate (fraction of all parameters removed, in (0, 1)) would drop, with the
        ranks re-allocated on the current weights every ``refresh``-th step (module docstring).

    Raises
    ------
    ConfigError
        An unknown kind, axis or polar method, ``p < 1``, a negative weight, ``every < 1``, ``refresh < 1``,
        ``proximal``, ``refresh > 1`` or ``polar`` other than "svd" with a derivative kind (or ``proximal`` with
        either); and, when called on a model, a filter item that matches no layer or a filter that leaves none.

    Examples
    --------
    >>> reg = Smoothness("second", 1e-3, exclude=("<first>", "<last>"))
    >>> loss = criterion(model(x), y) + reg(model)  # doctest: +SKIP
    >>> loss.backward(); optimizer.step(); reg.after_step(model, lr)  # doctest: +SKIP
    """

    def __init__(
        self,
        kind: Kind,
        weight: float,
        axes: str | Sequence[str] = ("out", "in"),
        p: float = 2,
        include: Entries = None,
        exclude: Entries = None,
        every: int = 1,
        proximal: bool = False,
        refresh: int = 1,
        polar: str = "svd",
        scale_free: bool = False,
        target_rate: float | None = None,
    ):
        self.kind = _check_kind(kind)
        self.weight = weight
        self._dims = _check_axes(axes)
        self.axes = (axes,) if isinstance(axes, str) else tuple(axes)
        self.p = _check_p(p)
        self.include = as_entries(include, "include")
        self.exclude = as_entries(exclude, "exclude")
        self.every = _check_count(every, "every", "penalise every k-th step")
        if proximal and self.kind != "nuclear":
            raise ConfigError(f"proximal=True is only available for kind='nuclear', not {self.kind!r}")
        self.proximal = bool(proximal)
        self.refresh = _check_count(refresh, "refresh", "recompute the polar factor every k-th step")
        if polar not in POLARS:
            raise ConfigError(f"unknown polar method {polar!r}; choose one of {', '.join(POLARS)}")
        self.polar = polar
        if (self.refresh > 1 or polar != "svd") and (self.kind != "nuclear" or self.proximal):
            raise ConfigError(
                "refresh and polar shape the nuclear penalty's gradient; they need kind='nuclear' without proximal"
            )
        if target_rate is not None:
            if isinstance(target_rate, bool) or not isinstance(target_rate, numbers.Real) or not 0 < target_rate < 1:
                raise ConfigError(
                    f"target_rate must be a fraction of parameters removed in (0, 1), got {target_rate!r}"
                )
            if self.kind != "nuclear" or self.proximal or polar != "svd":
                raise ConfigError("target_rate needs kind='nuclear' without proximal, with polar='svd'")
        self.target_rate = None if target_rate is None else float(target_rate)
        self.scale_free = bool(scale_free)
        if self.scale_free and (self.proximal or self.lagged):
            raise ConfigError("scale_free=True needs the loss-term penalty: not proximal, refresh=1, polar='svd'")
        self._polars: list[Tensor] = []  # the lagged polar factors, one per block group (_blocks_by_shape order)
        self._polar_step = 0  # the step they were computed at
        self._polar_owner: list[int] | None = None  # storages of the weights they belong to (None: not yet known)
        self.step = 0  # optimizer steps counted (calls, or after_step alone); restored by load_state_dict()
        self._called = False  # a call counted the current step (after_step then does not count it again)
        self._checked: set[int] = set()
        self.tail_ranks: dict[str, int] = {}  # with target_rate: the ranks the current tail factors keep

    @property
    def weight(self) -> float:
        """The penalty weight, a float >= 0; assign to change it (e.g. a warm-up)."""
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        self._weight = _check_weight(value)

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}"
            for k, v, default in [
                ("include", self.include, ()),
                ("exclude", self.exclude, ()),
                ("every", self.every, 1),
                ("proximal", self.proximal, False),
                ("refresh", self.refresh, 1),
                ("polar", self.polar, "svd"),
                ("scale_free", self.scale_free, False),
                ("target_rate", self.target_rate, None),
            ]
            if v != default
        )
        return f"Smoothness({self.kind!r}, weight={self.weight:g}, axes={self.axes!r}, p={self.p:g}{extra})"

    # -- layers ------------------------------------------------------------------------------------------

    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The penalised layers of ``model`` by qualified name, in module order.

        Raises
        ------
        ConfigError
            If the model has no Conv2d/Linear layer, an include or exclude item matches none of them, or the
            filters leave none.
        """
        root = unwrap(model)
        if not any(_layer_type(m) is not None for m in root.modules()):
            raise ConfigError(f"{type(root).__name__} has no Conv2d or Linear layer with an initialised weight")
        chosen = select_layers(root, self.include, self.exclude, types=_penalised).chosen
        if not chosen:
            raise ConfigError("the include/exclude filters leave no layer to penalise")
        return chosen

    def _blocks_by_shape(self, model: nn.Module) -> tuple[list[Tensor], list[list[str]]]:
        """The penalised layers' blocks ``(B, o, i, kh, kw)``, concatenated per (block shape, dtype, device), and
        for each group the layer name of every block.

        Derivative kinds on CPU are not concatenated (the copy would cost more than the per-layer calls save);
        batching pays for the SVD and for kernel launches on GPUs.
        """
        named = [(n, _layer_type(m).blocks(m)) for n, m in self.layers(model).items()]
        if self.kind != "nuclear" and all(b.device.type == "cpu" for _, b in named):
            return [b for _, b in named], [[n] * b.shape[0] for n, b in named]
        by_key: dict[tuple, list[tuple[str, Tensor]]] = {}
        for n, b in named:
            by_key.setdefault((tuple(b.shape[1:]), b.dtype, b.device), []).append((n, b))
        groups = [torch.cat([b for _, b in g]) if len(g) > 1 else g[0][1] for g in by_key.values()]
        return groups, [[n for n, b in g for _ in range(b.shape[0])] for g in by_key.values()]

    @staticmethod
    def _device(model: nn.Module) -> torch.device:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    # -- the penalty -------------------------------------------------------------------------------------

    def active(self) -> bool:
        """Whether the current step adds a loss term (weight > 0, not proximal, and a step of the schedule)."""
        return self.weight > 0 and not self.proximal and self.step % self.every == 0

    def unweighted(self, model: nn.Module) -> Tensor:
        """The sum over penalised layers of their terms (:func:`normalized_penalty`), without weight or schedule.

        Returns
        -------
        Tensor
            0-dim, differentiable, float32 (float64 if the weights are).
        """
        groups, names = self._blocks_by_shape(model)
        if self.lagged:
            polars = self._current_polars(model, groups, names)
            parts = [_lagged_terms(blocks, polar).sum() for blocks, polar in zip(groups, polars, strict=True)]
        else:
            parts = [_terms(blocks, self.kind, self._dims, self.p, self.scale_free).sum() for blocks in groups]
        return sum(parts[1:], parts[0])

    @property
    def lagged(self) -> bool:
        """Whether the nuclear term uses a stored polar factor (``refresh > 1``, an inexact ``polar`` or a
        ``target_rate``)."""
        return self.refresh > 1 or self.polar != "svd" or self.target_rate is not None

    def _tail_polars(self, model: nn.Module, groups: list[Tensor], names: list[list[str]]) -> list[Tensor]:
        """Tail polar factors ``sum_{i > r} u_i v_i^T`` per block, ``r`` from the allocation at ``target_rate``."""
        from smoothcompress.allocation import plan_ranks  # the allocation imports the factorization: load on use

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "coarse rank steps" on every refresh says nothing to a training run
            self.tail_ranks = plan_ranks(unwrap(model), self.target_rate, "global", "channel")
        polars = []
        with torch.no_grad(), torch.autocast(device_type=groups[0].device.type, enabled=False):
            for g, block_names in zip(groups, names, strict=True):
                mats = g.detach().flatten(2)
                mats = mats.float() if mats.dtype in _LOW_PRECISION else mats
                u, _, vh = _thin_svd(mats)
                k = u.shape[-1]
                keep = torch.tensor([self.tail_ranks.get(n, k) for n in block_names], device=u.device)
                mask = (torch.arange(k, device=u.device)[None, :] >= keep[:, None]).to(u.dtype)
                polars.append((u * mask[:, None, :]) @ vh)
        return polars

    def _current_polars(self, model: nn.Module, groups: list[Tensor], names: list[list[str]]) -> list[Tensor]:
        """The polar factors of ``groups`` ``(B, m, n)`` each: the stored ones while fresh, else recomputed.

        Stored factors belong to the model they came from: another model (other parameter tensors, even of the
        same shapes) gets fresh ones. Factors restored by :meth:`load_state_dict` are kept for the first model.
        """
        shapes = [g.flatten(2).shape for g in groups]
        stale = self.step - self._polar_step >= self.refresh or self.step < self._polar_step
        owner = [p.data_ptr() for p in model.parameters()]
        if self._polar_owner is not None and owner != self._polar_owner:
            stale = True
        self._polar_owner = owner
        if stale or [p.shape for p in self._polars] != shapes:
            if self.target_rate is not None:
                self._polars = self._tail_polars(model, groups, names)
            else:
                self._polars = [polar_factor(g.flatten(2), self.polar) for g in groups]
            self._polar_step = self.step
        elif any(p.device != g.device for p, g in zip(self._polars, groups, strict=True)):  # restored on the CPU
            self._polars = [p.to(g.device) for p, g in zip(self._polars, groups, strict=True)]
        return self._polars

    def __call__(self, model: nn.Module) -> Tensor:
        """``weight * sum of layer terms`` (times ``every`` on the scheduled steps), or a free zero.

        Parameters
        ----------
        model : nn.Module
            Any model with Conv2d/Linear layers (DDP and ``torch.compile`` wrappers are looked through).

        Returns
        -------
        Tensor
            0-dim on the model's device, float32 (float64 for a float64 model); differentiable when active.

        Each call counts one optimizer step (for ``every`` and ``refresh``): call it once per step.
        """
        try:
            if not self.active():
                if (self.include or self.exclude) and id(model) not in self._checked:
                    self.layers(model)  # a filter typo must fail on the first step, not when the weight warms up
                    self._checked.add(id(model))
                return torch.zeros((), device=self._device(model))
            return (self.weight * self.every) * self.unweighted(model)
        finally:
            self.step += 1
            self._called = True

    def roughness(self, model: nn.Module) -> dict[str, float]:
        """The scale-free roughness (:func:`roughness`) of each penalised layer, without gradient, for reports."""
        out = {}
        with torch.no_grad():
            for name, m in self.layers(model).items():
                kind = _layer_type(m)
                out[name] = float(roughness(kind.weight(m), self.kind, self.axes, self.p, kind.groups(m)))
        return out

    @torch.no_grad()
    def after_step(self, model: nn.Module, lr: float) -> None:
        """Call after each ``optimizer.step()``: with ``proximal``, applies the nuclear prox.

        It counts the step only when no call of the penalty counted it (a proximal penalty needs no call).

        Parameters
        ----------
        model : nn.Module
            The model being trained.
        lr : float
            The learning rate of the step just taken; the prox uses ``eta = lr * every``.
        """
        if not self._called:
            self.step += 1
        self._called = False
        if not self.proximal or self.weight == 0 or self.step % self.every:
            return
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
            raise ConfigError(f"lr must be a finite number >= 0, got {lr!r}")
        eta_weight = float(lr) * self.every * self.weight
        by_key: dict[tuple, list[Tensor]] = {}
        for module in self.layers(model).values():
            kind = _layer_type(module)
            weight, g = kind.weight(module), kind.groups(module)
            view = weight.view(g, weight.shape[0] // g, *weight.shape[1:])  # writing to it writes the weight
            by_key.setdefault((tuple(view.shape[1:]), weight.dtype, weight.device), []).append(view)
        for views in by_key.values():  # one batched SVD per block shape
            if len(views) == 1:
                _nuclear_prox_(views[0], eta_weight)
                continue
            stacked = torch.cat(views)
            _nuclear_prox_(stacked, eta_weight)
            for view, new in zip(views, stacked.split([v.shape[0] for v in views]), strict=True):
                view.copy_(new)

    def state_dict(self) -> dict:
        """The mutable state to checkpoint: the step counter, the current weight and any lagged polar factors."""
        state: dict = {"step": self.step, "weight": self.weight}
        if self._polars:
            state |= {"polars": [p.detach().cpu() for p in self._polars], "polar_step": self._polar_step}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (e.g. on ``--resume``); polar factors move to the model's device on use."""
        self.step = int(state["step"])
        self.weight = state["weight"]
        self._polars = list(state.get("polars", []))
        self._polar_step = int(state.get("polar_step", 0))
        self._polar_owner = None

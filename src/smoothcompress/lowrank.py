"""Low-rank SVD compression of Conv2d and Linear layers, without fine-tuning.

A dense layer with weight ``W`` is replaced by two smaller layers whose product is the best rank-``r``
approximation of ``W`` (Eckart-Young), computed from the truncated SVD of a matricization of ``W``:

* ``scheme="channel"``: ``mat(W) = W.reshape(C_out, C_in*kh*kw)``. The layer becomes a ``kh x kw`` conv
  ``C_in -> r`` (same stride, padding and dilation) followed by a ``1 x 1`` conv ``r -> C_out`` that carries the
  bias. A Linear ``in -> out`` becomes ``Linear(in -> r)`` then ``Linear(r -> out)``.
* ``scheme="spatial"`` (Jaderberg et al. 2014; AIMET's spatial SVD): ``W`` arranged as a
  ``(C_out*kw) x (C_in*kh)`` matrix. The layer becomes a ``kh x 1`` conv ``C_in -> r`` then a ``1 x kw`` conv
  ``r -> C_out``. For 1x1 convs and Linear layers it coincides with "channel".
* ``scheme="auto"``: per layer, whichever of the two loses less spectral energy at the same parameter cost.

A layer is only factorized when that saves parameters, ``r * (rows + cols) < rows * cols``; otherwise it stays
dense.

BatchNorm-aware truncation (``bn_aware=True``, off by default). When a BatchNorm follows a layer, the network
computes ``diag(g) W`` with ``g = |gamma| / sqrt(running_var + eps)``, not ``W``; the BatchNorm-aware truncation
minimises ``||diag(g) (W - W_r)||_F`` instead of ``||W - W_r||_F``. Conv -> BatchNorm pairs are found by tracing
the model with ``torch.fx``; when tracing fails the truncation falls back to the plain SVD and the record says so.
Measured on trained models (``benchmarks/results/allocation.json``) it lost accuracy: 3 to 17 points on a CIFAR
ResNet-20 at rates 0.2 to 0.5, and 0.4 to 9 points on a digits CNN, also at equal ranks, so plain truncation is the
default. The likely reason: ``g`` divides by the output's standard deviation, which depends on the input
covariance, while the Frobenius error assumes white inputs; the two do not combine into the real output error.

Rank allocation, for a requested ``rate`` (fraction of ALL parameters removed, BatchNorm and biases included). Let
``kept_l(r) = sum_{i<=r} s_i**2 / sum_i s_i**2`` be the fraction of layer ``l``'s spectral energy kept at rank ``r``.

* ``"global"`` (default): choose all ranks jointly to minimise ``sum_l -log kept_l(r_l)`` at the parameter
  budget: greedily drop the singular value whose energy, relative to the energy its layer still keeps, is least
  per parameter saved, walking each layer's lower convex hull of (parameters saved, loss). The log makes the
  losses of successive layers compound like the signal they pass on, and never strips a layer to nothing to save
  a few parameters elsewhere.
* ``"global-linear"``: the same greedy with loss ``sum_l (1 - kept_l)``, the fraction of each layer's total
  energy dropped. It tends to strip the largest layers to rank 1 (on flat spectra it always does). In
  ``benchmarks/results/allocation.json`` it matched "global" within a point at low rates and kept 7 to 46 points
  less accuracy at the highest ones (one exception: 6 points more on the digits CNN at 0.6); kept for comparison.
* ``"uniform"``: keep the same fraction of the full rank in every layer.
* ``"energy"``: keep the same fraction of spectral energy in every layer.

The achieved rate is never below the request and overshoots it by at most about one rank step of one layer.

Speed. Fewer FLOPs are not proportionally faster on CPU (``benchmarks/results/compress.json``, CIFAR ResNet-18).
In eager mode every conv converts its activations between NCHW and oneDNN's blocked layout, and factorizing
doubles the number of convs; the factorized layers are also thin (``r`` channels), which oneDNN runs further from
its peak. ``torch.jit.optimize_for_inference(torch.jit.trace(model, x))`` keeps the blocked layout between layers
and recovers most of the FLOP reduction; ``rank_multiple=16`` and channels_last help too. "global" allocation takes
the parameters where they are, in the late low-resolution layers that hold few FLOPs, so it saves fewer FLOPs than
"uniform" at the same rate.

Functional core: :func:`matricize`, :func:`spectrum`, :func:`factorize_weight`. Module wrappers:
:class:`FactorizedLinear`, :class:`FactorizedConv2d` (base :class:`Factorized`). Model level:
:func:`plan_compression`, :func:`plan_ranks`, :func:`compress`, :func:`compress_report`.

The SVDs are computed from the eigen-decomposition (in float64) of the smaller Gram matrix ``A A^T`` or ``A^T A``
(formed in the weight's precision, at least float32). That is several times faster than a full SVD on CPU, and
exact at full rank because the kept basis is orthonormal. Singular values below about ``sqrt(eps) * s_max`` are not
resolved this way (``eps`` of the weight's dtype), which only matters for spectra plots: :func:`spectrum` calls
``torch.linalg.svdvals`` in float64.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import fnmatch
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from smoothcompress.accounting import RateUnreachable, Report, count_params, layer_report

__all__ = [
    "SCHEMES",
    "ALLOCATIONS",
    "COMPRESSION_ATTR",
    "matricize",
    "spectrum",
    "bn_scale",
    "Factors",
    "factorize_weight",
    "Factorized",
    "FactorizedLinear",
    "FactorizedConv2d",
    "find_bn_pairs",
    "LayerPlan",
    "Plan",
    "plan_compression",
    "plan_ranks",
    "compress",
    "compress_report",
]

SCHEMES = ("channel", "spatial", "auto")
"""Factorization schemes accepted by :func:`compress`."""

ALLOCATIONS = ("global", "global-linear", "uniform", "energy")
"""Rank allocation strategies accepted by :func:`compress`."""

COMPRESSION_ATTR = "sc_compression"
"""Attribute in which :func:`compress` records, as plain JSON-able data, how the model was compressed."""

_RATE_TOLERANCE = 0.01
_MIN_ROW_WEIGHT = 1e-6  # BatchNorm scales below this fraction of the largest one are clamped (dead channels)


# ---------------------------------------------------------------------------------------------------------
# Functional core: weights -> matrices -> factors


def _as_4d(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 2:
        return weight[:, :, None, None]
    if weight.dim() == 4:
        return weight
    raise ValueError(
        f"expected a Linear weight (out, in) or a Conv2d weight (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}"
    )


def _check_scheme(scheme: str, allow_auto: bool = False) -> None:
    allowed = SCHEMES if allow_auto else SCHEMES[:2]
    if scheme not in allowed:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(map(repr, allowed))}")


def _effective_scheme(weight_shape: torch.Size | tuple, scheme: str) -> str:
    """ "spatial" on a 1x1 kernel or a Linear layer is the same factorization as "channel"; call it that."""
    if scheme == "spatial" and (len(weight_shape) == 2 or tuple(weight_shape[2:]) == (1, 1)):
        return "channel"
    return scheme


def matricize(weight: torch.Tensor, scheme: str = "channel") -> torch.Tensor:
    """The matrix whose truncated SVD a scheme uses.

    Parameters
    ----------
    weight : Tensor
        Conv2d weight of shape (C_out, C_in, kh, kw), or Linear weight of shape (out, in) (treated as kh = kw = 1).
    scheme : {"channel", "spatial"}
        ``"channel"``: ``W.reshape(C_out, C_in*kh*kw)``, row ``o`` is output channel ``o``.
        ``"spatial"``: shape (C_out*kw, C_in*kh) with ``M[o*kw + j, c*kh + i] = W[o, c, i, j]``; this is the
        transpose of Jaderberg et al.'s ``(C_in*kh) x (C_out*kw)`` arrangement and has the same singular values.

    Returns
    -------
    Tensor
        A view or copy of ``weight``, shape as above.
    """
    _check_scheme(scheme)
    w = _as_4d(weight)
    c_out, c_in, kh, kw = w.shape
    if scheme == "channel":
        return w.reshape(c_out, c_in * kh * kw)
    return w.permute(0, 3, 1, 2).reshape(c_out * kw, c_in * kh)


def _row_weight(out_scale: torch.Tensor | None, weight: torch.Tensor, scheme: str) -> torch.Tensor | None:
    """Expand a per-output-channel scale (C_out,) to the rows of :func:`matricize` and clamp dead channels."""
    if out_scale is None:
        return None
    w = _as_4d(weight)
    out_scale = out_scale.detach().reshape(-1)
    if out_scale.numel() != w.shape[0]:
        raise ValueError(f"out_scale has {out_scale.numel()} entries but the weight has {w.shape[0]} output channels")
    if not torch.isfinite(out_scale).all() or (out_scale < 0).any():
        raise ValueError("out_scale must be finite and non-negative")
    top = float(out_scale.max())
    if top == 0.0:
        return None
    d = out_scale.clamp_min(top * _MIN_ROW_WEIGHT)
    return d.repeat_interleave(w.shape[3]) if scheme == "spatial" else d


def spectrum(weight: torch.Tensor, scheme: str = "channel", out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of a layer's matricized weight, in descending order.

    Parameters
    ----------
    weight : Tensor
        Conv2d weight (C_out, C_in, kh, kw) or Linear weight (out, in).
    scheme : {"channel", "spatial"}
        Matricization, see :func:`matricize`.
    out_scale : Tensor, optional
        Per-output-channel scale (C_out,), e.g. :func:`bn_scale` of the following BatchNorm; the spectrum is then
        that of ``diag(out_scale) W``, the weight the network effectively applies.

    Returns
    -------
    Tensor
        Shape (min(rows, cols),), float64 on the weight's device, computed with ``torch.linalg.svdvals``.
    """
    _check_scheme(scheme)
    m = matricize(weight.detach(), scheme).to(torch.float64)
    d = _row_weight(out_scale, weight, scheme)
    if d is not None:
        m = d.to(m)[:, None] * m
    return torch.linalg.svdvals(m)


def bn_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Per-channel factor ``|gamma| / sqrt(running_var + eps)`` by which an eval-mode BatchNorm scales its input.

    Parameters
    ----------
    bn : nn.BatchNorm1d or nn.BatchNorm2d
        Must track running statistics.

    Returns
    -------
    Tensor
        Shape (num_features,), float64.
    """
    if bn.running_var is None:
        raise ValueError("the BatchNorm does not track running statistics, so its inference scale is unknown")
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64).abs() if bn.weight is not None else torch.ones_like(var)
    return gamma / torch.sqrt(var + bn.eps)


@dataclass
class _Decomposition:
    """Truncated-SVD data of a row-weighted matrix ``A = diag(w) M``, from the smaller Gram matrix.

    ``side == "right"``: ``basis`` (n, k) holds right singular vectors; else ``basis`` (m, k) holds left ones.
    """

    matrix: torch.Tensor  # M, (m, n), float32 or float64
    row_weight: torch.Tensor | None  # w, (m,)
    s: torch.Tensor  # singular values of A, descending, (k,), k = min(m, n)
    basis: torch.Tensor
    side: str

    @property
    def full_rank(self) -> int:
        return int(self.s.numel())

    def kept_energy(self) -> torch.Tensor:
        """Fraction of ``sum s**2`` kept at rank r = 1..k, shape (k,), float64, on the CPU."""
        e = self.s.detach().to("cpu", torch.float64) ** 2
        total = float(e.sum())
        if total == 0.0:
            return torch.ones_like(e)
        return (torch.cumsum(e, 0) / total).clamp_max(1.0)


@contextlib.contextmanager
def _one_thread():
    """Run the enclosed torch ops single-threaded, then restore the thread count.

    Used for eigenproblems up to 1024 x 1024: multi-threaded LAPACK gains little at these sizes, and when the cores
    are shared its spinning OpenMP threads stall at every barrier (a 512 x 512 ``eigh`` took 4 to 8 s with 2 threads
    on a loaded 2-core machine, against 0.17 s with one). The thread count is process-wide, so torch ops running
    concurrently in other Python threads are briefly single-threaded too.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _decompose(matrix: torch.Tensor, row_weight: torch.Tensor | None = None) -> _Decomposition:
    # products in float64 for float64 weights, else float32; the small symmetric eigenproblem always in float64
    dtype = torch.float64 if matrix.dtype == torch.float64 else torch.float32
    m = matrix.detach().to(dtype)
    w = row_weight.to(m) if row_weight is not None else None
    a = m if w is None else w[:, None] * m
    rows, cols = a.shape
    side = "left" if rows <= cols else "right"
    gram = a @ a.T if side == "left" else a.T @ a
    with _one_thread() if gram.shape[0] <= 1024 else contextlib.nullcontext():
        lam, vec = torch.linalg.eigh(gram.to(torch.float64))
    s = lam.flip(0).clamp_min(0).sqrt()
    return _Decomposition(matrix=m, row_weight=w, s=s, basis=vec.flip(1).to(dtype), side=side)


def _truncate(dec: _Decomposition, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``B`` (m, r) and ``A`` (r, n) with ``B @ A`` minimising ``||diag(w) (M - B A)||_F``, balanced."""
    if dec.side == "right":
        a = dec.basis[:, :rank].T  # V_r^T: the best approximation is M V_r V_r^T
        b = dec.matrix @ a.T
    else:
        u = dec.basis[:, :rank]  # U_r: the best approximation is diag(w)^-1 U_r U_r^T diag(w) M
        if dec.row_weight is None:
            a, b = u.T @ dec.matrix, u
        else:
            a, b = u.T @ (dec.row_weight[:, None] * dec.matrix), u / dec.row_weight[:, None]
    na, nb = a.norm(dim=1), b.norm(dim=0)
    ok = (na > 0) & (nb > 0)
    g = torch.where(ok, torch.sqrt(na / torch.where(ok, nb, 1.0)), torch.ones_like(na))
    return b * g, a / g[:, None]


class Factors(NamedTuple):
    """Weights of the two layers that replace one dense layer, and what the truncation kept.

    ``first`` (r, C_in, kh, kw) / ``second`` (C_out, r, 1, 1) for the channel scheme, ``first`` (r, C_in, kh, 1) /
    ``second`` (C_out, r, 1, kw) for the spatial scheme, ``first`` (r, in) / ``second`` (out, r) for a Linear weight.
    """

    first: torch.Tensor
    second: torch.Tensor
    energy: float  # fraction of (weighted) spectral energy kept
    full_rank: int


def _reshape_factors(weight_shape: tuple, scheme: str, b: torch.Tensor, a: torch.Tensor) -> tuple:
    r = a.shape[0]
    if len(weight_shape) == 2:
        return a, b
    c_out, c_in, kh, kw = weight_shape
    if scheme == "channel":
        return a.reshape(r, c_in, kh, kw), b.reshape(c_out, r, 1, 1)
    return a.reshape(r, c_in, kh, 1), b.reshape(c_out, kw, r).permute(0, 2, 1).reshape(c_out, r, 1, kw)


def _factors(weight: torch.Tensor, dec: _Decomposition, rank: int, scheme: str) -> Factors:
    _check_rank(rank, dec.full_rank)
    b, a = _truncate(dec, rank)
    first, second = _reshape_factors(tuple(weight.shape), scheme, b, a)
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    energy = float(dec.kept_energy()[rank - 1])
    return Factors(first.to(dtype).contiguous(), second.to(dtype).contiguous(), energy, dec.full_rank)


def _check_rank(rank: int, full_rank: int, name: str = "") -> None:
    where = f" for layer {name!r}" if name else ""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ValueError(f"rank{where} must be an int, got {rank!r}")
    if rank < 1:
        raise ValueError(f"rank{where} must be at least 1, got {rank}")
    if rank > full_rank:
        raise ValueError(f"rank {rank}{where} is above the full rank {full_rank}")


def factorize_weight(
    weight: torch.Tensor, rank: int, scheme: str = "channel", out_scale: torch.Tensor | None = None
) -> Factors:
    """Truncated-SVD factors of one layer's weight.

    Parameters
    ----------
    weight : Tensor
        Conv2d weight (C_out, C_in, kh, kw) or Linear weight (out, in).
    rank : int
        Kept rank, ``1 <= rank <= full rank`` (``min(rows, cols)`` of :func:`matricize`).
    scheme : {"channel", "spatial"}
        See :func:`matricize`. "spatial" on a 1x1 or Linear weight is the same as "channel".
    out_scale : Tensor, optional
        Per-output-channel scale (C_out,) of the error norm: the factors minimise
        ``||diag(out_scale) (W - W_r)||_F``. Pass :func:`bn_scale` of a following BatchNorm.

    Returns
    -------
    Factors
        ``first`` and ``second`` weights (shapes in :class:`Factors`), in the weight's dtype, with
        ``second o first == W_r``; at full rank ``W_r == W`` up to rounding.
    """
    _check_scheme(scheme)
    scheme = _effective_scheme(weight.shape, scheme)
    weight = weight.detach()
    dec = _decompose(matricize(weight, scheme), _row_weight(out_scale, weight, scheme))
    return _factors(weight, dec, rank, scheme)


# ---------------------------------------------------------------------------------------------------------
# Module wrappers


class Factorized(nn.Module):
    """Base class of a dense layer replaced by two smaller ones: ``forward(x) = second(first(x))``.

    Attributes
    ----------
    first, second : nn.Module
        The two layers.
    rank : int
        Inner dimension (channels or features between the two layers).
    full_rank : int
        Rank of the dense weight's matricization; ``rank == full_rank`` computes the dense layer exactly.
    energy : float or None
        Fraction of spectral energy kept (of the BatchNorm-weighted weight when truncation was BatchNorm-aware).
    """

    first: nn.Module
    second: nn.Module

    def __init__(self, rank: int, full_rank: int, energy: float | None = None):
        super().__init__()
        _check_rank(rank, full_rank)
        self.rank = int(rank)
        self.full_rank = int(full_rank)
        self.energy = None if energy is None else float(energy)

    def _copy_from(self, factors: Factors, bias: torch.Tensor | None) -> Factorized:
        """Copy ``factors`` into the two layers and ``bias`` into the second; returns ``self``."""
        with torch.no_grad():
            self.first.weight.copy_(factors.first)
            self.second.weight.copy_(factors.second)
            if bias is not None:
                self.second.bias.copy_(bias)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def config(self) -> dict:
        """Constructor arguments as JSON-able data: ``type(self)(**self.config())`` rebuilds the structure."""
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        """The weight of the equivalent dense layer, ``W_r`` (same shape as the weight it replaced)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        energy = f", energy={self.energy:.4f}" if self.energy is not None else ""
        return f"rank={self.rank}, full_rank={self.full_rank}{energy}"


class FactorizedLinear(Factorized):
    """``Linear(in -> rank, bias=False)`` then ``Linear(rank -> out, bias)``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the replaced ``nn.Linear``.
    rank : int
        Inner size, ``1 <= rank <= min(in_features, out_features)``.
    bias : bool
        Whether the second layer has a bias (it carries the dense layer's bias).
    full_rank : int, optional
        Defaults to ``min(in_features, out_features)``.
    energy : float, optional
        Kept energy, for reports.
    device, dtype
        Factory arguments of the two layers.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        full_rank: int | None = None,
        energy: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(rank, full_rank if full_rank is not None else min(in_features, out_features), energy)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int, out_scale: torch.Tensor | None = None) -> FactorizedLinear:
        """Factorize ``linear`` at ``rank`` (see :func:`factorize_weight` for ``out_scale``)."""
        return cls.from_factors(linear, factorize_weight(linear.weight, rank, "channel", out_scale))

    @classmethod
    def from_factors(cls, linear: nn.Linear, factors: Factors) -> FactorizedLinear:
        """Build from precomputed :class:`Factors` of ``linear.weight``, copying its bias."""
        w = linear.weight
        rank = factors.first.shape[0]
        mod = nn.utils.skip_init(
            cls, w.shape[1], w.shape[0], rank, linear.bias is not None, factors.full_rank, factors.energy,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        return mod._copy_from(factors, linear.bias)

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.second.bias is not None,
            "full_rank": self.full_rank,
            "energy": self.energy,
        }

    def dense_weight(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


class FactorizedConv2d(Factorized):
    """A Conv2d replaced by two convs.

    ``scheme="channel"``: ``Conv2d(C_in -> rank, (kh, kw), stride, padding, dilation)`` then
    ``Conv2d(rank -> C_out, 1)``. ``scheme="spatial"``: ``Conv2d(C_in -> rank, (kh, 1))`` with the vertical stride,
    padding and dilation, then ``Conv2d(rank -> C_out, (1, kw))`` with the horizontal ones. The second conv carries
    the bias. Input (N, C_in, H, W) -> output (N, C_out, H', W'), as the dense conv.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the replaced conv (groups must be 1).
    kernel_size, stride, dilation : int or tuple of int
        As in ``nn.Conv2d``.
    padding : int, tuple of int or {"same", "valid"}
        As in ``nn.Conv2d``.
    rank : int
        Inner channels, ``1 <= rank <= full rank``.
    bias : bool
        Whether the second conv has a bias.
    padding_mode : str
        As in ``nn.Conv2d``; applied where that conv pads.
    scheme : {"channel", "spatial"}
        The factorization.
    full_rank : int, optional
        Defaults to the full rank of the scheme's matricization.
    energy : float, optional
        Kept energy, for reports.
    device, dtype
        Factory arguments of the two convs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        rank: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        padding_mode: str = "zeros",
        scheme: str = "channel",
        full_rank: int | None = None,
        energy: float | None = None,
        device=None,
        dtype=None,
    ):
        _check_scheme(scheme)
        (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
        if full_rank is None:
            full_rank = (
                min(out_channels, in_channels * kh * kw)
                if scheme == "channel"
                else min(out_channels * kw, in_channels * kh)
            )
        super().__init__(rank, full_rank, energy)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = (kh, kw), (sh, sw), (dh, dw)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode, self.scheme = padding_mode, scheme
        fk = {"device": device, "dtype": dtype}
        if scheme == "channel":
            self.first = nn.Conv2d(
                in_channels, rank, (kh, kw), (sh, sw), self.padding, (dh, dw), bias=False, padding_mode=padding_mode,
                **fk,
            )  # fmt: skip
            self.second = nn.Conv2d(rank, out_channels, 1, bias=bias, **fk)
        else:
            ph, pw = (self.padding, self.padding) if isinstance(self.padding, str) else self.padding
            self.first = nn.Conv2d(
                in_channels, rank, (kh, 1), (sh, 1), ph if isinstance(ph, str) else (ph, 0), (dh, 1), bias=False,
                padding_mode=padding_mode, **fk,
            )  # fmt: skip
            self.second = nn.Conv2d(
                rank, out_channels, (1, kw), (1, sw), pw if isinstance(pw, str) else (0, pw), (1, dw), bias=bias,
                padding_mode=padding_mode, **fk,
            )  # fmt: skip

    @classmethod
    def from_dense(
        cls, conv: nn.Conv2d, rank: int, scheme: str = "channel", out_scale: torch.Tensor | None = None
    ) -> FactorizedConv2d:
        """Factorize ``conv`` (groups must be 1) at ``rank`` (see :func:`factorize_weight`)."""
        _check_conv(conv)
        scheme = _effective_scheme(conv.weight.shape, scheme)
        return cls.from_factors(conv, factorize_weight(conv.weight, rank, scheme, out_scale), scheme)

    @classmethod
    def from_factors(cls, conv: nn.Conv2d, factors: Factors, scheme: str = "channel") -> FactorizedConv2d:
        """Build from precomputed :class:`Factors` of ``conv.weight`` for ``scheme``, copying its bias."""
        _check_conv(conv)
        w = conv.weight
        mod = nn.utils.skip_init(
            cls, w.shape[1], w.shape[0], conv.kernel_size, factors.first.shape[0], conv.stride, conv.padding,
            conv.dilation, conv.bias is not None, conv.padding_mode, scheme, factors.full_rank, factors.energy,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        return mod._copy_from(factors, conv.bias)

    def config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "rank": self.rank,
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "bias": self.second.bias is not None,
            "padding_mode": self.padding_mode,
            "scheme": self.scheme,
            "full_rank": self.full_rank,
            "energy": self.energy,
        }

    def dense_weight(self) -> torch.Tensor:
        a, b = self.first.weight, self.second.weight
        if self.scheme == "channel":
            w = b.flatten(1) @ a.flatten(1)
            return w.reshape(self.out_channels, self.in_channels, *self.kernel_size)
        return torch.einsum("okj,kci->ocij", b[:, :, 0, :], a[:, :, :, 0])

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, " + super().extra_repr()


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError(f"cannot factorize a grouped conv (groups={conv.groups})")


# ---------------------------------------------------------------------------------------------------------
# Conv -> BatchNorm pairs


def _trace_bn_pairs(model: nn.Module) -> tuple[dict[str, str], str | None]:
    """(pairs, note): pairs maps a Conv2d/Linear name to the BatchNorm that alone consumes its output."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - fx raises many types; any failure means "no pairs known"
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return {}, f"torch.fx could not trace the model ({type(e).__name__}: {msg}); plain SVD truncation used"
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) not in (nn.Conv2d, nn.Linear):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or len(users[0].all_input_nodes) != 1:
            continue
        layer, bn = modules[node.target], modules.get(users[0].target)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) or bn.running_var is None:
            continue
        if calls[node.target] != 1 or calls[users[0].target] != 1 or bn.num_features != layer.weight.shape[0]:
            continue
        pairs[node.target] = users[0].target
    return pairs, None


def find_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Layers whose output goes only into a BatchNorm, found by ``torch.fx`` tracing.

    Parameters
    ----------
    model : nn.Module
        Any model; it is traced, not run, and not modified.

    Returns
    -------
    dict
        ``{layer name: BatchNorm name}`` for Conv2d/Linear layers followed by a BatchNorm1d/2d that tracks running
        statistics. Empty, with a warning, when the model cannot be traced.
    """
    pairs, note = _trace_bn_pairs(model)
    if note:
        warnings.warn(note, stacklevel=2)
    return pairs


# ---------------------------------------------------------------------------------------------------------
# Planning: which layers, which scheme, which rank


@dataclass(frozen=True)
class LayerPlan:
    """What compression does to one eligible layer.

    ``scheme`` and ``rank`` are ``None`` when the layer stays dense. ``params_before``/``params_after`` count the
    layer's weight only (its bias is unchanged). ``energy`` is the kept fraction of spectral energy (1.0 if dense).
    """

    name: str
    scheme: str | None
    rank: int | None
    full_rank: int
    energy: float
    params_before: int
    params_after: int


@dataclass
class Plan:
    """A compression plan for a whole model (see :func:`plan_compression`).

    Attributes
    ----------
    layers : dict
        :class:`LayerPlan` of every eligible layer, by module name.
    notes : dict
        Status of layers that are not eligible, e.g. ``{"conv0": "skipped: grouped conv (groups=4)"}``.
    params_before, params_after : int
        All parameters of the model before and after.
    bn_pairs : dict
        ``{layer: BatchNorm}`` used for BatchNorm-aware truncation (empty if ``bn_aware=False``).
    bn_note : str or None
        Why BatchNorm-aware truncation was not available, if it was not.
    """

    layers: dict[str, LayerPlan]
    notes: dict[str, str]
    params_before: int
    params_after: int
    bn_pairs: dict[str, str] = field(default_factory=dict)
    bn_note: str | None = None

    @property
    def rate(self) -> float:
        """Fraction of all parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def ranks(self) -> dict[str, int]:
        """``{name: rank}`` of the layers that get factorized."""
        return {n: p.rank for n, p in self.layers.items() if p.rank is not None}


class _Option(NamedTuple):
    saving: int  # weight params saved vs dense
    loss: float  # normalised energy lost, in [0, 1]
    scheme: str | None  # None: dense
    rank: int | None


@dataclass
class _Layer:
    name: str
    module: nn.Module
    dense: int  # weight params
    decs: dict[str, _Decomposition]  # by scheme
    kept: dict[str, list[float]]  # kept energy fraction at rank 1..R, by scheme
    log_loss: bool  # loss -log(kept) if True, else 1 - kept
    multiple: int  # allocated ranks are multiples of this
    options: list[_Option]  # dense first, then every allowed (scheme, rank) that saves params

    def unit(self, scheme: str) -> int:
        m, n = self.decs[scheme].matrix.shape
        return m + n

    def option(self, scheme: str, rank: int) -> _Option:
        saving = self.dense - rank * self.unit(scheme)
        if saving <= 0:
            return self.options[0]
        kept = self.kept[scheme][rank - 1]
        return _Option(saving, -math.log(max(kept, 1e-300)) if self.log_loss else 1.0 - kept, scheme, rank)

    def snap(self, scheme: str, rank: int, up: bool) -> int:
        """``rank`` moved to a multiple of ``self.multiple`` (nearest, or the next one up), within [1, full rank]."""
        k = self.multiple
        if k > 1:
            rank = k * (math.ceil(rank / k) if up else max(1, round(rank / k)))
        return max(1, min(rank, self.decs[scheme].full_rank))

    def best_with_saving(self, at_least: int) -> _Option:
        """The option with the least loss among those saving at least ``at_least`` (ties: less saving)."""
        ok = [o for o in self.options if o.saving >= at_least]
        return min(ok, key=lambda o: (o.loss, o.saving)) if ok else max(self.options, key=lambda o: o.saving)


def _matches(name: str, module: nn.Module, rule) -> bool:
    if isinstance(rule, str):
        return fnmatch.fnmatchcase(name, rule)
    return isinstance(module, rule)


def _check_args(rate, allocation: str, scheme: str) -> None:
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1) (the fraction of all parameters removed, e.g. 0.7), got {rate}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; choose one of {', '.join(map(repr, ALLOCATIONS))}")
    _check_scheme(scheme, allow_auto=True)


def _eligible(model: nn.Module, exclude: Iterable) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Eligible layers by name, and a status note for every other weight layer."""
    rules = list(exclude)
    for rule in rules:
        if not isinstance(rule, str) and not (isinstance(rule, type) and issubclass(rule, nn.Module)):
            raise ValueError(f"exclude entries must be name patterns (str) or nn.Module types, got {rule!r}")
    used = set()
    layers, notes = {}, {}
    inside_factorized: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, Factorized):
            inside_factorized.append(name + ".")
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or not name:
            continue
        hit = next((r for r in rules if _matches(name, m, r)), None)
        if hit is not None:
            used.add(id(hit) if not isinstance(hit, str) else hit)
            notes[name] = f"skipped: excluded by {hit if isinstance(hit, str) else hit.__name__}"
        elif any(name.startswith(p) for p in inside_factorized):
            notes[name] = "skipped: already factorized"
        elif type(m) is nn.Conv2d and m.groups != 1:
            kind = "depthwise" if m.groups == m.in_channels else "grouped"
            notes[name] = f"skipped: {kind} conv (groups={m.groups})"
        elif type(m) in (nn.Conv2d, nn.Linear):
            layers[name] = m
        else:
            notes[name] = f"skipped: unsupported layer type {type(m).__name__}"
    for rule in rules:
        if (rule if isinstance(rule, str) else id(rule)) not in used:
            shown = rule if isinstance(rule, str) else rule.__name__
            raise ValueError(f"exclude entry {shown!r} matches no weight layer of the model")
    return layers, notes


def _analyse(
    model: nn.Module, scheme: str, exclude: Iterable, bn_aware: bool, log_loss: bool, multiple: int
) -> tuple[list[_Layer], dict[str, str], dict[str, str], str | None]:
    modules, notes = _eligible(model, exclude)
    bn_pairs, bn_note = _trace_bn_pairs(model) if bn_aware and modules else ({}, None)
    bn_pairs = {k: v for k, v in bn_pairs.items() if k in modules}
    named = dict(model.named_modules())
    layers = []
    for name, m in modules.items():
        w = m.weight.detach()
        out_scale = bn_scale(named[bn_pairs[name]]) if name in bn_pairs else None
        wanted = ("channel", "spatial") if scheme == "auto" else (scheme,)
        decs, kept = {}, {}
        for s in {_effective_scheme(w.shape, s) for s in wanted}:
            decs[s] = _decompose(matricize(w, s), _row_weight(out_scale, w, s))
            kept[s] = decs[s].kept_energy().tolist()
        layer = _Layer(name, m, w.numel(), decs, kept, log_loss, multiple, [_Option(0, 0.0, None, None)])
        for s in decs:
            r_max = min(decs[s].full_rank, (layer.dense - 1) // layer.unit(s))
            layer.options += [layer.option(s, r) for r in range(multiple, r_max + 1, multiple)]
        layers.append(layer)
    return layers, notes, bn_pairs, bn_note


def _lower_hull(options: list[_Option]) -> list[_Option]:
    """Vertices of the lower convex hull of (saving, loss), from the dense option to the largest saving."""
    best: dict[int, _Option] = {}
    for o in options:
        if o.saving not in best or o.loss < best[o.saving].loss:
            best[o.saving] = o
    hull: list[_Option] = []
    for p in sorted(best.values()):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            if (a.saving - o.saving) * (p.loss - o.loss) - (a.loss - o.loss) * (p.saving - o.saving) > 0:
                break
            hull.pop()
        hull.append(p)
    return hull


def _allocate_global(layers: list[_Layer], need: int) -> dict[str, _Option]:
    choice = {lay.name: lay.options[0] for lay in layers}
    if need <= 0:
        return choice
    steps = []
    for i, lay in enumerate(layers):
        hull = _lower_hull(lay.options)
        for j in range(1, len(hull)):
            ds, dl = hull[j].saving - hull[j - 1].saving, hull[j].loss - hull[j - 1].loss
            steps.append((dl / ds, i, j, hull[j], ds))
    steps.sort(key=lambda t: t[:3])
    saved = 0
    for _, i, _, vertex, ds in steps:
        lay = layers[i]
        if saved + ds >= need:
            choice[lay.name] = lay.best_with_saving(choice[lay.name].saving + need - saved)
            return choice
        choice[lay.name] = vertex
        saved += ds
    return choice


def _bisect(saving_at, need: int) -> tuple[float, float]:
    """``(lo, hi)``, adjacent to float precision, with ``saving_at(lo) >= need > saving_at(hi)``.

    ``saving_at`` is non-increasing on [0, 1] and ``saving_at(0) >= need > saving_at(1)``.
    """
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if saving_at(mid) >= need else (lo, mid)
    return lo, hi


def _uniform_choice(lay: _Layer, fraction: float) -> _Option:
    main = "channel" if "channel" in lay.decs else next(iter(lay.decs))
    opt = lay.option(main, lay.snap(main, round(fraction * lay.decs[main].full_rank), up=False))
    return lay.best_with_saving(opt.saving) if len(lay.decs) > 1 and opt.scheme else opt


def _energy_choice(lay: _Layer, keep: float) -> _Option:
    opts = []
    for s, kept in lay.kept.items():
        opts.append(lay.option(s, lay.snap(s, bisect.bisect_left(kept, keep) + 1, up=True)))
    return max(opts, key=lambda o: (o.saving, -o.loss))


def _allocate_by(layers: list[_Layer], need: int, rule) -> dict[str, _Option]:
    """Choices of a one-parameter rule (a rank or energy fraction shared by all layers) that save ``need``.

    Layers of equal size change rank at the same parameter value, so the saving jumps there. Between the two sides
    of the jump, layers are moved one by one (least loss per parameter first) and stop as soon as ``need`` is met:
    every layer still follows the rule to within one step.
    """
    if need <= 0:
        return {lay.name: lay.options[0] for lay in layers}
    lo, hi = _bisect(lambda x: sum(rule(lay, x).saving for lay in layers), need)
    choice = {lay.name: rule(lay, hi) for lay in layers}
    moves = []
    for lay in layers:
        a, b = choice[lay.name], rule(lay, lo)
        if b.saving > a.saving:
            moves.append(((b.loss - a.loss) / (b.saving - a.saving), lay.name, b))
    saved = sum(o.saving for o in choice.values())
    for _, name, b in sorted(moves, key=lambda t: t[:2]):
        if saved >= need:
            break
        saved += b.saving - choice[name].saving
        choice[name] = b
    return choice


def _max_saving(layers: list[_Layer], allocation: str) -> int:
    if allocation == "uniform":
        return sum(_uniform_choice(lay, 0.0).saving for lay in layers)
    if allocation == "energy":
        return sum(_energy_choice(lay, 0.0).saving for lay in layers)
    return sum(max(o.saving for o in lay.options) for lay in layers)


def _pinned_option(lay: _Layer, rank: int, scheme: str) -> _Option:
    main = "channel" if scheme == "auto" or scheme not in lay.decs else scheme
    _check_rank(rank, lay.decs[main].full_rank, lay.name)
    opt = lay.option(main, rank)
    return lay.best_with_saving(opt.saving) if scheme == "auto" and opt.scheme else opt


def _plan(
    model: nn.Module,
    rate: float | None,
    allocation: str,
    scheme: str,
    ranks: Mapping[str, int] | None,
    exclude: Iterable,
    bn_aware: bool,
    rank_multiple: int,
) -> tuple[Plan, list[_Layer], dict[str, _Option]]:
    _check_args(rate, allocation, scheme)
    if isinstance(rank_multiple, bool) or not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise ValueError(f"rank_multiple must be a positive int (e.g. 8 or 16 for CPU speed), got {rank_multiple!r}")
    ranks = dict(ranks or {})
    if rate is None and not ranks:
        raise ValueError("pass a rate (fraction of parameters to remove) or explicit ranks per layer")
    log_loss = allocation != "global-linear"
    layers, notes, bn_pairs, bn_note = _analyse(model, scheme, exclude, bn_aware, log_loss, rank_multiple)
    by_name = {lay.name: lay for lay in layers}
    for name in ranks:
        if name not in by_name:
            why = f" ({notes[name]})" if name in notes else ""
            shown = ", ".join(list(by_name)[:8]) + (", ..." if len(by_name) > 8 else "")
            raise ValueError(f"ranks names {name!r}, which is not an eligible layer{why}; eligible: {shown}")
    total = count_params(model)
    choice = {n: _pinned_option(by_name[n], r, scheme) for n, r in ranks.items()}
    pinned_saving = sum(o.saving for o in choice.values())
    free = [lay for lay in layers if lay.name not in ranks]
    if rate is None:
        choice.update({lay.name: lay.options[0] for lay in free})
    else:
        target = math.ceil(rate * total)
        if pinned_saving > target + _RATE_TOLERANCE * total:
            raise ValueError(
                f"the explicit ranks alone remove {pinned_saving / total:.4f} of the parameters, more than the "
                f"requested rate {rate}; raise the rate or pass rate=None to apply only the explicit ranks"
            )
        need = target - pinned_saving
        reachable = pinned_saving + _max_saving(free, allocation)
        if need > 0 and reachable < target:
            raise RateUnreachable(
                f"rate {rate} is out of reach: with allocation={allocation!r} and scheme={scheme!r} the eligible "
                f"layers can remove at most {reachable / total:.4f} of the parameters (every layer at rank 1; "
                f"{len(notes)} weight layers skipped or excluded). Ask for a rate of at most "
                f"{math.floor(reachable / total * 1000) / 1000:.3f}."
            )
        if allocation in ("global", "global-linear"):
            choice.update(_allocate_global(free, need))
        else:
            rule = _uniform_choice if allocation == "uniform" else _energy_choice
            choice.update(_allocate_by(free, need, rule))
    saved = sum(o.saving for o in choice.values())
    if rate is not None and abs(saved / total - rate) > _RATE_TOLERANCE:
        warnings.warn(
            f"achieved rate {saved / total:.4f} is more than {_RATE_TOLERANCE} away from the requested {rate} "
            f"(allocation={allocation!r}): the rank steps of this model's layers are coarse",
            stacklevel=3,
        )
    plans = {}
    for lay in layers:
        o = choice[lay.name]
        full = lay.decs[o.scheme or next(iter(lay.decs))].full_rank
        energy = lay.kept[o.scheme][o.rank - 1] if o.scheme else 1.0
        plans[lay.name] = LayerPlan(lay.name, o.scheme, o.rank, full, energy, lay.dense, lay.dense - o.saving)
    plan = Plan(plans, notes, total, total - saved, bn_pairs, bn_note)
    return plan, layers, choice


def plan_compression(
    model: nn.Module,
    rate: float | None = 0.7,
    allocation: str = "global",
    scheme: str = "channel",
    *,
    ranks: Mapping[str, int] | None = None,
    exclude: Iterable[str | type[nn.Module]] = (),
    bn_aware: bool = False,
    rank_multiple: int = 1,
) -> Plan:
    """Decide, without building anything, which layers :func:`compress` factorizes, with which scheme and rank.

    Parameters
    ----------
    model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple
        As in :func:`compress`.

    Returns
    -------
    Plan
        Per-layer decisions, notes on skipped layers and the parameter totals.
    """
    return _plan(model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple)[0]


def plan_ranks(
    model: nn.Module,
    rate: float | None = 0.7,
    allocation: str = "global",
    scheme: str = "channel",
    **kwargs,
) -> dict[str, int]:
    """``{layer name: rank}`` of the layers :func:`compress` would factorize (dense layers are left out).

    Parameters are those of :func:`plan_compression`.
    """
    return plan_compression(model, rate, allocation, scheme, **kwargs).ranks()


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def compress(
    model: nn.Module,
    rate: float | None = 0.7,
    allocation: str = "global",
    scheme: str = "channel",
    *,
    ranks: Mapping[str, int] | None = None,
    exclude: Iterable[str | type[nn.Module]] = (),
    bn_aware: bool = False,
    rank_multiple: int = 1,
) -> nn.Module:
    """A smaller copy of ``model`` with eligible Conv2d and Linear layers replaced by truncated-SVD factors.

    Eligible: plain ``nn.Conv2d`` with ``groups == 1`` and ``nn.Linear``. Grouped and depthwise convs,
    ConvTranspose, subclasses and any other weight layer are skipped and listed in the report. No fine-tuning.

    Parameters
    ----------
    model : nn.Module
        The model to compress; it is not modified.
    rate : float or None
        Fraction of ALL parameters to remove (BatchNorm and biases included), in [0, 1); 0.7 means 70% fewer
        parameters. The achieved rate is at least ``rate`` and overshoots it by about one rank step of one layer
        (well under 1 point on ResNets). ``None``: apply only the explicit ``ranks``.
    allocation : {"global", "global-linear", "uniform", "energy"}
        How ranks are chosen, see the module docstring.
    scheme : {"channel", "spatial", "auto"}
        The factorization, see the module docstring.
    ranks : mapping of str to int, optional
        Explicit ranks of some layers, by module name. These layers are pinned; the others are allocated to reach
        ``rate``. With ``scheme="auto"`` an explicit rank is a channel-scheme rank, and the spatial scheme is used
        instead where it loses less at the same or lower parameter cost. A rank that saves no parameters keeps
        the layer dense.
    exclude : iterable of str or nn.Module type
        Layers to keep dense: ``fnmatch`` patterns on module names (e.g. ``"fc"``, ``"layers.0.*"``) or module
        types (e.g. ``nn.Linear``). An entry that matches nothing raises ValueError.
    bn_aware : bool
        Truncate ``diag(g) W`` for layers followed by a BatchNorm with scale ``g`` (see :func:`bn_scale`) rather
        than ``W``. Off by default: on trained models it measured worse or no better (see the module docstring).
    rank_multiple : int
        Allocate only ranks that are multiples of this (explicit ``ranks`` are taken as given). oneDNN runs convs
        whose channel counts are multiples of 16 markedly faster on AVX-512 CPUs, so 8 or 16 buys inference speed
        at a coarser rate granularity (``benchmarks/results/compress.json``).

    Returns
    -------
    nn.Module
        A deep copy of ``model`` in which factorized layers are :class:`FactorizedConv2d` /
        :class:`FactorizedLinear` at the original module names. ``rate=0`` returns an exact copy. The copy carries
        ``sc_compression`` (:data:`COMPRESSION_ATTR`): a JSON-able dict with the request, the achieved rate, the
        BatchNorm pairs and a status note for every skipped layer, which :func:`compress_report` and
        :func:`smoothcompress.save` use.

    Raises
    ------
    ValueError
        On a rate outside [0, 1), an unknown allocation or scheme, a rank below 1 or above full rank, an unknown
        layer name, an exclude entry that matches nothing, or a rate that the eligible layers cannot reach (the
        message names the largest reachable rate).
    """
    plan, layers, choice = _plan(model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple)
    out = copy.deepcopy(model)
    for lay in layers:
        opt = choice[lay.name]
        if opt.scheme is None:
            continue
        factors = _factors(lay.module.weight.detach(), lay.decs[opt.scheme], opt.rank, opt.scheme)
        if isinstance(lay.module, nn.Linear):
            new = FactorizedLinear.from_factors(lay.module, factors)
        else:
            new = FactorizedConv2d.from_factors(lay.module, factors, opt.scheme)
        new.train(lay.module.training)
        _replace(out, lay.name, new)
    if plan.bn_note:
        warnings.warn(plan.bn_note, stacklevel=2)
    setattr(
        out,
        COMPRESSION_ATTR,
        {
            "method": "svd",
            "rate": rate,
            "achieved_rate": plan.rate,
            "allocation": allocation,
            "scheme": scheme,
            "bn_aware": bool(bn_aware),
            "rank_multiple": rank_multiple,
            "bn_pairs": dict(plan.bn_pairs),
            "bn_note": plan.bn_note,
            "ranks": {n: [p.scheme, p.rank] for n, p in plan.layers.items() if p.rank is not None},
            "notes": dict(plan.notes),
        },
    )
    return out


def compress_report(model: nn.Module, compressed: nn.Module, input_shape: Iterable[int] | None = None) -> Report:
    """Per-layer report of a compression: name, shape, status, rank, params and FLOPs before/after, kept energy.

    Parameters
    ----------
    model : nn.Module
        The original model.
    compressed : nn.Module
        ``compress(model, ...)``, or the same model after :func:`smoothcompress.load`; the skip notes and the
        request are read from its ``sc_compression`` attribute when present.
    input_shape : tuple of int, optional
        Full input shape with the batch dimension, e.g. ``(1, 3, 32, 32)``, for FLOP counts; ``None`` skips FLOPs.

    Returns
    -------
    Report
        ``str(report)`` is the table with totals; ``report.to_dict()`` is JSON-ready data; ``report.extra`` holds
        the ``sc_compression`` record.
    """
    info = getattr(compressed, COMPRESSION_ATTR, None) or {}
    label = f"svd allocation={info.get('allocation')} scheme={info.get('scheme')}" if info else ""
    rep = layer_report(model, compressed, input_shape, notes=info.get("notes"), method=label)
    rep.extra = dict(info)
    return rep

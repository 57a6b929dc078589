"""Truncated-SVD factorization of one Conv2d or Linear weight, and the modules that replace a dense layer.

A dense layer with weight ``W`` is replaced by two smaller layers whose product ``W_r`` is the best rank-``r``
approximation of ``W`` (Eckart-Young) in the Frobenius norm, optionally weighted per output channel, computed from
the truncated SVD of a matricization of ``W`` (:func:`matricize`):

* ``scheme="channel"``: ``mat(W) = W.reshape(C_out, C_in*kh*kw)``. The layer becomes a ``kh x kw`` conv
  ``C_in -> r`` (same stride, padding and dilation) followed by a ``1 x 1`` conv ``r -> C_out`` that carries the
  bias. A Linear ``in -> out`` becomes ``Linear(in -> r)`` then ``Linear(r -> out)``.
* ``scheme="spatial"``: ``W`` arranged as a ``(C_out*kw) x (C_in*kh)`` matrix. The layer becomes a ``kh x 1`` conv
  ``C_in -> r`` then a ``1 x kw`` conv ``r -> C_out``. For 1x1 convs and Linear layers it coincides with
  "channel".

Functional core: :func:`matricize`, :func:`spectrum`, :func:`factorize_weight` (-> :class:`Factors`). Module
wrappers: :class:`FactorizedLinear`, :class:`FactorizedConv2d` (base :class:`Factorized`), each with
``from_dense`` and ``from_factors``.

Precision: the factors come from the eigen-decomposition (in float64) of the smaller Gram matrix of the
matricization (formed in the weight's precision, at least float32); they are exact at full rank. Singular values
below about ``sqrt(eps) * s_max`` (``eps`` of the weight's dtype) are not resolved; :func:`spectrum` computes
``torch.linalg.svdvals`` in float64 instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from smoothcompress.errors import ConfigError
from smoothcompress.layers import linear_bias, linear_weight

__all__ = [
    "matricize",
    "spectrum",
    "Factors",
    "factorize_weight",
    "Factorized",
    "FactorizedLinear",
    "FactorizedConv2d",
    "conv_config",
]

_SCHEMES = ("channel", "spatial")
_MIN_ROW_WEIGHT = 1e-6  # per-channel scales below this fraction of the largest one are clamped (dead channels)

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


def _check_scheme(scheme: str) -> None:
    if scheme not in _SCHEMES:
        raise ConfigError(f"unknown scheme {scheme!r}; choose one of {', '.join(map(repr, _SCHEMES))}")


def effective_scheme(weight_shape: torch.Size | tuple, scheme: str) -> str:
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


def expand_row_weight(out_scale: torch.Tensor | None, weight: torch.Tensor, scheme: str) -> torch.Tensor | None:
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
        Per-output-channel scale (C_out,), e.g. :func:`smoothcompress.batchnorm.bn_scale` of the following
        BatchNorm; the spectrum is then that of ``diag(out_scale) W``, the weight the network effectively applies.

    Returns
    -------
    Tensor
        Shape (min(rows, cols),), float64 on the weight's device, computed with ``torch.linalg.svdvals``.
    """
    _check_scheme(scheme)
    m = matricize(weight.detach(), scheme).to(torch.float64)
    d = expand_row_weight(out_scale, weight, scheme)
    if d is not None:
        m = d.to(m)[:, None] * m
    return torch.linalg.svdvals(m)


@dataclass
class Decomposition:
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


@functools.cache
def _mkl_thread_local_setter():
    """oneMKL's ``MKL_Set_Num_Threads_Local`` from the loaded ``libtorch_cpu``, or ``None`` where there is none."""
    if not sys.platform.startswith("linux") or not torch.backends.mkl.is_available():
        return None
    try:
        setter = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    setter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
    return setter


@contextlib.contextmanager
def _sequential_lapack(tensor: torch.Tensor, max_size: int = 1024):
    """Run the enclosed LAPACK call single-threaded in this thread only, for CPU matrices up to ``max_size``.

    Uses oneMKL's thread-local thread count, restored on exit; torch's and MKL's process-wide settings are not
    touched, so other threads are unaffected. A no-op without MKL, on other devices, and for larger matrices.
    """
    setter = _mkl_thread_local_setter() if tensor.device.type == "cpu" and tensor.shape[-1] <= max_size else None
    previous = setter(1) if setter is not None else None
    try:
        yield
    finally:
        if setter is not None:
            setter(previous)


def decompose(
    matrix: torch.Tensor, row_weight: torch.Tensor | None = None, moment: torch.Tensor | None = None
) -> Decomposition:
    """Truncated-SVD data of ``diag(w) M`` in the metric of an input moment ``C`` (columns of ``M`` are inputs).

    Without ``moment`` the spectrum is that of ``A = diag(w) M``. With it, that of ``A L`` for any ``L L^T = C``:
    its left singular vectors are the eigenvectors of ``A C A^T`` (no factor of ``C`` is needed), and the best
    ``M_r`` in ``||diag(w) (M - M_r) L||_F`` is ``diag(w)^-1 U_r U_r^T diag(w) M``, the same "left" truncation
    as the plain case. ``s`` then holds output-error singular values, ``s_i**2`` the output energy of direction i.
    """
    # products in float64 for float64 weights, else float32; the small symmetric eigenproblem always in float64
    dtype = torch.float64 if matrix.dtype == torch.float64 else torch.float32
    m = matrix.detach().to(dtype)
    w = row_weight.to(m) if row_weight is not None else None
    a = m if w is None else w[:, None] * m
    rows, cols = a.shape
    if moment is not None:
        if moment.shape != (cols, cols):
            raise ValueError(f"input moment of shape {tuple(moment.shape)} does not fit a matrix with {cols} columns")
        a64 = a.to(torch.float64)
        gram = a64 @ moment.to(a64) @ a64.T
        with _sequential_lapack(gram):
            lam, vec = torch.linalg.eigh((gram + gram.T) / 2)
        k = min(rows, cols)  # the rank of M: eigenvalues past it are zero
        s = lam.flip(0)[:k].clamp_min(0).sqrt()
        return Decomposition(matrix=m, row_weight=w, s=s, basis=vec.flip(1)[:, :k].to(dtype), side="left")
    side = "left" if rows <= cols else "right"
    gram = a @ a.T if side == "left" else a.T @ a
    with _sequential_lapack(gram):  # multi-threaded LAPACK stalls on small problems when cores are shared
        lam, vec = torch.linalg.eigh(gram.to(torch.float64))
    s = lam.flip(0).clamp_min(0).sqrt()
    return Decomposition(matrix=m, row_weight=w, s=s, basis=vec.flip(1).to(dtype), side=side)


def _truncate(dec: Decomposition, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def truncated_factors(weight: torch.Tensor, dec: Decomposition, rank: int, scheme: str) -> Factors:
    """The rank-``rank`` factors of ``weight`` (in ``scheme``) from its decomposition ``dec``."""
    check_rank(rank, dec.full_rank)
    b, a = _truncate(dec, rank)
    first, second = _reshape_factors(tuple(weight.shape), scheme, b, a)
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    energy = float(dec.kept_energy()[rank - 1])
    return Factors(first.to(dtype).contiguous(), second.to(dtype).contiguous(), energy, dec.full_rank)


def check_rank(rank: int, full_rank: int, name: str = "") -> None:
    """Raise a one-line ConfigError unless ``rank`` is an int in ``[1, full_rank]`` (``name``: the layer)."""
    where = f" for layer {name!r}" if name else ""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise ConfigError(f"rank{where} must be an int, got {rank!r}")
    if rank < 1:
        raise ConfigError(f"rank{where} must be at least 1, got {rank}")
    if rank > full_rank:
        raise ConfigError(f"rank {rank}{where} is above the full rank {full_rank}")


def factorize_weight(
    weight: torch.Tensor,
    rank: int,
    scheme: str = "channel",
    out_scale: torch.Tensor | None = None,
    moment: torch.Tensor | None = None,
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
        ``||diag(out_scale) (W - W_r)||_F``. Pass :func:`smoothcompress.batchnorm.bn_scale` of a following BatchNorm.
    moment : Tensor, optional
        Second moment ``C = E[x x^T]`` of the inputs of the matricized weight's columns, shape (cols, cols), e.g.
        :meth:`smoothcompress.calibration.Calibration.moment`. The factors then minimise the output error
        ``||(W - W_r) X||_F`` for inputs ``X`` with ``X X^T / N = C`` (whitened truncation), and ``energy`` is the
        kept fraction of output energy. Never a larger output error than plain truncation at the same rank.

    Returns
    -------
    Factors
        ``first`` and ``second`` weights (shapes in :class:`Factors`), in the weight's dtype, with
        ``second o first == W_r``; at full rank ``W_r == W`` up to rounding (with ``moment``: when it is positive
        definite, or when ``W`` has no more rows than columns).
    """
    _check_scheme(scheme)
    scheme = effective_scheme(weight.shape, scheme)
    weight = weight.detach()
    dec = decompose(matricize(weight, scheme), expand_row_weight(out_scale, weight, scheme), moment)
    return truncated_factors(weight, dec, rank, scheme)


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
        check_rank(rank, full_rank)
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

    def __getattr__(self, name: str):
        if name == "weight":  # no such attribute: say why, for code that reads ``layer.weight`` directly
            raise AttributeError(
                f"{type(self).__name__} has no 'weight': it holds first.weight and second.weight (dense_weight() is "
                "their product). Code that reads a layer's .weight directly (e.g. Hugging Face ViT reads "
                "patch_embeddings.projection.weight.dtype) needs that layer kept dense: compress(..., exclude=[name])"
            )
        return super().__getattr__(name)

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
    """``Linear(in -> rank, bias=False)`` then ``Linear(rank -> out, bias)``; replaces an ``nn.Linear`` or any
    Linear-like module (:mod:`smoothcompress.layers`).

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
    def from_dense(cls, linear: nn.Module, rank: int, out_scale: torch.Tensor | None = None) -> FactorizedLinear:
        """Factorize ``linear`` (an ``nn.Linear`` or a Linear-like module, see :mod:`smoothcompress.layers`, e.g.
        ``transformers``' ``Conv1D``) at ``rank`` (see :func:`factorize_weight` for ``out_scale``)."""
        return cls.from_factors(linear, factorize_weight(linear_weight(linear), rank, "channel", out_scale))

    @classmethod
    def from_factors(cls, linear: nn.Module, factors: Factors) -> FactorizedLinear:
        """Build from precomputed :class:`Factors` of ``linear``'s ``(out, in)`` weight, copying its bias."""
        w, bias = linear_weight(linear), linear_bias(linear)
        rank = factors.first.shape[0]
        mod = nn.utils.skip_init(
            cls, w.shape[1], w.shape[0], rank, bias is not None, factors.full_rank, factors.energy,
            device=w.device, dtype=w.dtype,
        )  # fmt: skip
        return mod._copy_from(factors, bias)

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
        scheme = effective_scheme(conv.weight.shape, scheme)
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
        return {**conv_config(self), "scheme": self.scheme}

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


def conv_config(module: nn.Module) -> dict:
    """The constructor settings a factorized conv (``FactorizedConv2d``, ``CPConv2d``, ``TuckerConv2d``) is saved
    with: the dense conv's geometry, its rank, whether its output layer ``second`` has a bias, and the fit's
    ``full_rank`` and ``energy``."""
    return {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": list(module.kernel_size),
        "rank": module.rank,
        "stride": list(module.stride),
        "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
        "dilation": list(module.dilation),
        "bias": module.second.bias is not None,
        "padding_mode": module.padding_mode,
        "full_rank": module.full_rank,
        "energy": module.energy,
    }

"""CP and Tucker-2 factorization of a Conv2d kernel through TensorLy, and the standard convs that replace the layer.

A conv kernel ``W`` of shape (C_out, C_in, kh, kw) is a 4-way tensor. Besides the matrix schemes of
:mod:`smoothcompress.factorized` ("channel", "spatial"), two tensor schemes factorize it as a tensor:

* ``scheme="cp"`` (CP / PARAFAC, Lebedev et al. 2015): ``W ~ sum_{q<r} a_q (x) b_q (x) v_q (x) h_q``, a sum of
  ``r`` rank-one tensors. The layer becomes four standard convs (:class:`CPConv2d`): a ``1 x 1`` conv
  ``C_in -> r`` (rows ``b_q``), a depthwise ``kh x 1`` conv (``v_q``) with the vertical stride, padding and
  dilation, a depthwise ``1 x kw`` conv (``h_q``) with the horizontal ones, and a ``1 x 1`` conv ``r -> C_out``
  (columns ``a_q``) that carries the bias. A rank costs ``C_in + C_out + kh + kw`` parameters, against
  ``C_in*kh*kw + C_out`` for a channel-scheme SVD rank.
* ``scheme="tucker"`` (Tucker-2, Kim et al. 2016): ``W ~ G x_0 U_out x_1 U_in`` with a core ``G`` of shape
  (r_out, r_in, kh, kw). The layer becomes a ``1 x 1`` conv ``C_in -> r_in`` (``U_in^T``), a ``kh x kw`` conv
  ``r_in -> r_out`` (``G``) with the stride, padding and dilation, and a ``1 x 1`` conv ``r_out -> C_out``
  (``U_out``) that carries the bias (:class:`TuckerConv2d`). One rank ``r`` sets both:
  ``(r_out, r_in) = tucker_ranks(C_out, C_in, r)``, proportional to the channel counts, with ``r = max(C_out,
  C_in)`` the full ranks (exact).

For a 2-D weight (a Linear layer, or a ``1 x 1`` conv) both reduce to a truncated SVD, so such layers take the
"channel" scheme of :mod:`smoothcompress.factorized` (:func:`tensor_scheme`).

The decompositions are TensorLy's (``tensorly.decomposition.parafac``: CP-ALS with an SVD initialization;
``partial_tucker``: HOOI on the two channel modes), run with the PyTorch backend in float32 (float64 for a float64
weight), seeded (:data:`SEED`), so the same weight gives the same factors. With a per-output-channel scale ``d``
(a following BatchNorm, see :func:`smoothcompress.batchnorm.bn_scale`) the scaled tensor ``diag(d) W`` is
decomposed and ``d`` divided out of the output factor, so the factors minimise ``||diag(d) (W - W_r)||_F``.

The rank allocation (:mod:`smoothcompress.allocation`) needs each layer's loss at every rank. A CP or Tucker fit
at rank ``r`` has no closed form, so :class:`TensorFit` fits a coarse grid of ranks (:data:`GRID_POINTS` of them,
halving from the largest rank that saves parameters), takes ``kept(r) = 1 - err(r)**2`` with ``err`` the relative
Frobenius error of the fit (for an SVD truncation this is exactly the kept spectral energy), made non-decreasing in
``r``, and interpolates it linearly between grid ranks (``kept(0) = 0``). The fits are cached per layer within one
call, so the chosen rank is refitted only when it is off the grid, and in a bounded process-wide cache keyed by the
weight's bytes (:data:`CACHE_BYTES`), so compressing one model at several rates fits each grid rank once. This
needs the ``tensor`` extra (``pip install 'smoothcompress[tensor]'``); the modules themselves are plain torch and
load without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from smoothcompress.errors import ConfigError
from smoothcompress.extras import require
from smoothcompress.factorized import Factorized, check_rank, conv_config, expand_row_weight

__all__ = [
    "TENSOR_SCHEMES",
    "SEED",
    "GRID_POINTS",
    "CP_ITERATIONS",
    "TUCKER_ITERATIONS",
    "CACHE_BYTES",
    "EINSUM_FROM",
    "cp_contraction",
    "tensor_scheme",
    "tucker_ranks",
    "cp_full_rank",
    "tensor_params",
    "TensorFactors",
    "decompose_cp",
    "decompose_tucker",
    "TensorFit",
    "CPConv2d",
    "TuckerConv2d",
    "tensor_factorized",
]

TENSOR_SCHEMES = ("cp", "tucker")
"""The schemes that factorize a conv kernel as a 4-way tensor."""

SEED = 0
"""Random state of every decomposition (the random columns of an SVD initialization wider than a mode)."""

GRID_POINTS = 7
"""Ranks fitted per layer for the allocation: the largest that saves parameters, then halving."""

CP_ITERATIONS = 25
"""CP-ALS sweeps per fit (fewer when the error stops changing)."""

TUCKER_ITERATIONS = 10
"""HOOI sweeps per Tucker-2 fit (fewer when the error stops changing)."""

CACHE_BYTES = 256 * 2**20
"""Factor bytes of the fits kept for later calls in this process (one model at several rates refits nothing)."""

_TOL = 1e-7  # relative-error change below which ALS / HOOI stop early

EINSUM_FROM = 2**19
"""Entries of a CP fit's largest Khatri-Rao product from which the fit contracts by planned einsum
(:func:`cp_contraction`): below it TensorLy's default is faster, the planning costing more than the product saves
(``benchmarks/bench_cp_fit.py`` times both per layer size)."""


def tensor_scheme(weight_shape: torch.Size | tuple, scheme: str) -> str:
    """The scheme a layer of this weight shape takes: a tensor scheme on a 2-D or ``1 x 1`` weight is "channel"."""
    if scheme in TENSOR_SCHEMES and (len(weight_shape) == 2 or tuple(weight_shape[2:]) == (1, 1)):
        return "channel"
    return scheme


def tucker_ranks(out_channels: int, in_channels: int, rank: int) -> tuple[int, int]:
    """``(r_out, r_in)`` of Tucker rank ``rank``: ``rank`` scaled by each channel count over the larger one,
    rounded, at least 1; non-decreasing in ``rank`` and ``(out_channels, in_channels)`` at ``rank = max``."""
    top = max(out_channels, in_channels)
    return tuple(max(1, min(c, (rank * c + top // 2) // top)) for c in (out_channels, in_channels))


def cp_full_rank(shape: tuple[int, ...]) -> int:
    """An upper bound of the CP rank of a tensor of ``shape``: the product of all its sizes but the largest."""
    return math.prod(shape) // max(shape)


def tensor_params(shape: tuple[int, ...], scheme: str, rank: int) -> int:
    """Weight parameters of the ``scheme`` factorization at ``rank`` of a (C_out, C_in, kh, kw) kernel."""
    c_out, c_in, kh, kw = shape
    if scheme == "cp":
        return rank * (c_in + c_out + kh + kw)
    if scheme == "tucker":
        r_out, r_in = tucker_ranks(c_out, c_in, rank)
        return r_in * c_in + r_out * r_in * kh * kw + r_out * c_out
    raise ConfigError(f"unknown tensor scheme {scheme!r}; choose one of {', '.join(map(repr, TENSOR_SCHEMES))}")


def _full_rank(shape: tuple[int, ...], scheme: str) -> int:
    return cp_full_rank(shape) if scheme == "cp" else max(shape[0], shape[1])


class TensorFactors(NamedTuple):
    """The weights of the convs that replace one conv, and the fit.

    CP: ``weights = (first (r, C_in, 1, 1), vertical (r, 1, kh, 1), horizontal (r, 1, 1, kw), second (C_out, r, 1,
    1))``. Tucker-2: ``weights = (first (r_in, C_in, 1, 1), core (r_out, r_in, kh, kw), second (C_out, r_out, 1,
    1))``. ``energy`` is ``1 - err**2`` with ``err`` the relative Frobenius error of the (scaled) fit.
    """

    scheme: str
    rank: int
    weights: tuple[torch.Tensor, ...]
    energy: float
    full_rank: int


def _prepared(weight: torch.Tensor, out_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(diag(d) W, d)``: the tensor to decompose (float64 for a float64 weight, else float32) and the row scale
    (``None``: unscaled)."""
    if weight.dim() != 4:
        raise ValueError(f"expected a Conv2d weight (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    d = expand_row_weight(out_scale, weight, "channel") if out_scale is not None else None
    if d is None:
        return w, None
    d = d.to(w)
    return d[:, None, None, None] * w, d


def cp_contraction(shape: tuple[int, ...], rank: int) -> str:
    """TensorLy's tensor-algebra backend that the CP fit of a ``shape`` kernel at ``rank`` runs with: ``"einsum"``
    when torch plans einsum contractions (opt_einsum installed, as the ``tensor`` extra does, and
    ``torch.backends.opt_einsum.enabled``) and the fit's largest Khatri-Rao product has at least
    :data:`EINSUM_FROM` entries, else TensorLy's default ``"core"``.

    CP-ALS multiplies the kernel with the other modes' factors (MTTKRP) at every step. ``"core"`` first builds their
    Khatri-Rao product, ``C_out * C_in * kw`` rows by ``rank`` for the vertical kernel mode (gigabytes on a
    full-width ResNet layer); ``"einsum"`` does it as one ``torch.einsum`` that opt_einsum orders to contract the
    wide channel modes first, at the cost of planning each call. Without opt_einsum torch contracts the operands
    left to right, slower than ``"core"``.
    """
    planned = torch.backends.opt_einsum.is_available() and torch.backends.opt_einsum.enabled
    largest = max(math.prod(shape) // n for n in shape) * rank
    return "einsum" if planned and largest >= EINSUM_FROM else "core"


@contextlib.contextmanager
def _pytorch_backend(contraction: str = "core"):
    """TensorLy's PyTorch backend in this thread, with the tensor-algebra backend ``contraction``
    (:func:`cp_contraction`), without TensorLy's warnings about SVDs wider than a mode."""
    tl, decomposition = require("tensorly", "tensor"), require("tensorly.decomposition", "tensor")
    with (
        tl.backend_context("pytorch", local_threadsafe=True),
        tl.tenalg.backend_context(contraction, local_threadsafe=True),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        yield decomposition


def _key(weight: torch.Tensor, out_scale: torch.Tensor | None, scheme: str, rank: int) -> tuple:
    """What a fit depends on: the scheme, the rank, the settings (the CP contraction too) and the bytes of the weight
    and the scale."""
    h = hashlib.sha256()
    for t in (weight, out_scale):
        if t is not None:
            t = t.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    contraction = cp_contraction(tuple(weight.shape), rank) if scheme == "cp" else "core"
    return scheme, rank, SEED, CP_ITERATIONS, TUCKER_ITERATIONS, contraction, h.hexdigest()


class _FitCache:
    """Fits by :func:`_key`, least recently used first out beyond :data:`CACHE_BYTES` of factor tensors."""

    def __init__(self) -> None:
        self.fits: OrderedDict[tuple, TensorFactors] = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()

    def get(self, key: tuple) -> TensorFactors | None:
        with self.lock:
            fit = self.fits.get(key)
            if fit is not None:
                self.fits.move_to_end(key)
            return fit

    def put(self, key: tuple, fit: TensorFactors) -> None:
        size = sum(t.numel() * t.element_size() for t in fit.weights)
        with self.lock:
            if key in self.fits or size > CACHE_BYTES:
                return
            self.fits[key] = fit
            self.nbytes += size
            while self.nbytes > CACHE_BYTES:
                _, old = self.fits.popitem(last=False)
                self.nbytes -= sum(t.numel() * t.element_size() for t in old.weights)


_CACHE = _FitCache()


def _relative_error(t: torch.Tensor, approx: torch.Tensor) -> float:
    norm = float(t.norm())
    return float((t - approx).norm()) / norm if norm > 0 else 0.0


def decompose_cp(weight: torch.Tensor, rank: int, out_scale: torch.Tensor | None = None) -> TensorFactors:
    """CP factors of a conv kernel at ``rank`` (TensorLy's ``parafac``, PyTorch backend, seeded).

    Parameters
    ----------
    weight : Tensor
        Conv2d weight (C_out, C_in, kh, kw).
    rank : int
        Number of rank-one terms, ``1 <= rank <= cp_full_rank(weight.shape)``.
    out_scale : Tensor, optional
        Per-output-channel scale (C_out,) of the error norm (module docstring).

    Returns
    -------
    TensorFactors
        The four conv weights (shapes in :class:`TensorFactors`) in the weight's dtype; their composition is the
        fitted kernel. A kernel of exact CP rank ``<= rank`` is recovered up to the ALS convergence.
    """
    w, d = _prepared(weight, out_scale)
    full = cp_full_rank(tuple(w.shape))
    check_rank(rank, full)
    if float(w.norm()) == 0.0:
        factors = [torch.zeros(n, rank, dtype=w.dtype) for n in w.shape]
        weights = torch.ones(rank, dtype=w.dtype)
    else:
        with _pytorch_backend(cp_contraction(tuple(w.shape), rank)) as decomposition:
            weights, factors = decomposition.parafac(
                w, rank, n_iter_max=CP_ITERATIONS, init="svd", tol=_TOL, random_state=SEED, normalize_factors=True
            )
    weights, (a, b, v, h), w = weights.to(torch.float64), (f.to(torch.float64) for f in factors), w.to(torch.float64)
    d = d.to(torch.float64) if d is not None else None
    approx = torch.einsum("q,oq,cq,iq,jq->ocij", weights, a, b, v, h)
    energy = 1.0 - _relative_error(w, approx) ** 2
    # balance: every factor column gets the same norm, |lambda_q| ** (1/4)
    norms = [f.norm(dim=0) for f in (a, b, v, h)]
    scale = (weights.abs() * math.prod(norms)).clamp_min(0) ** 0.25
    a, b, v, h = (f / torch.where(n > 0, n, 1.0) * scale for f, n in zip((a, b, v, h), norms, strict=True))
    a = a * torch.sign(weights)
    if d is not None:
        a = a / d[:, None]
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    c_out, c_in, kh, kw = w.shape
    convs = (
        b.T.reshape(rank, c_in, 1, 1),
        v.T.reshape(rank, 1, kh, 1),
        h.T.reshape(rank, 1, 1, kw),
        a.reshape(c_out, rank, 1, 1),
    )
    return TensorFactors("cp", rank, tuple(t.to(dtype).contiguous() for t in convs), max(energy, 0.0), full)


def decompose_tucker(weight: torch.Tensor, rank: int, out_scale: torch.Tensor | None = None) -> TensorFactors:
    """Tucker-2 factors of a conv kernel at ``rank`` (TensorLy's ``partial_tucker`` on the channel modes).

    Parameters
    ----------
    weight : Tensor
        Conv2d weight (C_out, C_in, kh, kw).
    rank : int
        ``1 <= rank <= max(C_out, C_in)``; the mode ranks are :func:`tucker_ranks`.
    out_scale : Tensor, optional
        Per-output-channel scale (C_out,) of the error norm (module docstring).

    Returns
    -------
    TensorFactors
        The three conv weights (shapes in :class:`TensorFactors`) in the weight's dtype. At ``rank = max(C_out,
        C_in)`` their composition is the kernel up to rounding.
    """
    w, d = _prepared(weight, out_scale)
    c_out, c_in, kh, kw = w.shape
    full = max(c_out, c_in)
    check_rank(rank, full)
    r_out, r_in = tucker_ranks(c_out, c_in, rank)
    with _pytorch_backend() as decomposition:
        (core, (u_out, u_in)), _ = decomposition.partial_tucker(
            w, [r_out, r_in], modes=[0, 1], n_iter_max=TUCKER_ITERATIONS, init="svd", tol=_TOL, random_state=SEED
        )
    core, u_out, u_in, w = (t.to(torch.float64) for t in (core, u_out, u_in, w))
    d = d.to(torch.float64) if d is not None else None
    approx = torch.einsum("pqij,op,cq->ocij", core, u_out, u_in)
    energy = 1.0 - _relative_error(w, approx) ** 2
    if d is not None:
        u_out = u_out / d[:, None]
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    convs = (u_in.T.reshape(r_in, c_in, 1, 1), core, u_out.reshape(c_out, r_out, 1, 1))
    return TensorFactors("tucker", rank, tuple(t.to(dtype).contiguous() for t in convs), max(energy, 0.0), full)


_DECOMPOSE = {"cp": decompose_cp, "tucker": decompose_tucker}


class TensorFit:
    """One conv kernel's CP or Tucker-2 fits, for the rank allocation: parameters and kept energy at every rank.

    Fits the grid ranks when built (module docstring); :meth:`factors` returns the fit at any rank, cached.

    Parameters
    ----------
    weight : Tensor
        Conv2d weight (C_out, C_in, kh, kw) with ``kh * kw > 1``.
    scheme : {"cp", "tucker"}
    out_scale : Tensor, optional
        Per-output-channel scale (C_out,) of the error norm.

    Attributes
    ----------
    full_rank : int
        The largest rank: :func:`cp_full_rank` for CP, ``max(C_out, C_in)`` for Tucker.
    max_rank : int
        The largest rank whose factors have fewer parameters than the kernel (0 if none has).
    grid : list of int
        The fitted ranks, ascending.
    """

    def __init__(self, weight: torch.Tensor, scheme: str, out_scale: torch.Tensor | None = None):
        if scheme not in TENSOR_SCHEMES:
            raise ConfigError(f"unknown tensor scheme {scheme!r}; choose one of {', '.join(map(repr, TENSOR_SCHEMES))}")
        self.weight, self.scheme, self.out_scale = weight.detach(), scheme, out_scale
        self.shape = tuple(int(n) for n in weight.shape)
        self.full_rank = _full_rank(self.shape, scheme)
        dense = math.prod(self.shape)
        top = 0
        for r in range(1, self.full_rank + 1):  # params(r) is non-decreasing in r
            if self.params(r) >= dense:
                break
            top = r
        self.max_rank = top
        self.grid = sorted({max(1, round(top / 2**k)) for k in range(GRID_POINTS)}) if top else []
        self._cache: dict[int, TensorFactors] = {}
        self._kept: torch.Tensor | None = None

    def params(self, rank: int) -> int:
        """Weight parameters of the factors at ``rank``."""
        return tensor_params(self.shape, self.scheme, rank)

    def factors(self, rank: int) -> TensorFactors:
        """The fit at ``rank`` (computed once, then cached)."""
        if rank not in self._cache:
            key = _key(self.weight, self.out_scale, self.scheme, rank)
            fit = _CACHE.get(key)
            if fit is None:
                fit = _DECOMPOSE[self.scheme](self.weight, rank, self.out_scale)
                _CACHE.put(key, fit)
            self._cache[rank] = fit
        return self._cache[rank]

    def kept_energy(self) -> torch.Tensor:
        """Kept energy ``1 - err**2`` at ranks ``1..max_rank``, shape (max_rank,), float64: fitted at the grid
        ranks, made non-decreasing, linear between them (``0`` at rank 0)."""
        if self._kept is None:
            ranks, kept = [0], [0.0]
            for r in self.grid:
                ranks.append(r)
                kept.append(max(kept[-1], self.factors(r).energy))
            out = []
            for r in range(1, self.max_rank + 1):
                i = next(k for k in range(1, len(ranks)) if ranks[k] >= r)
                t = (r - ranks[i - 1]) / (ranks[i] - ranks[i - 1])
                out.append(kept[i - 1] + t * (kept[i] - kept[i - 1]))
            self._kept = torch.tensor(out, dtype=torch.float64)
        return self._kept


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def _split_padding(padding) -> tuple:
    """``(vertical, horizontal)`` paddings of a (kh, 1) and a (1, kw) conv that together pad as ``padding``."""
    if isinstance(padding, str):
        return padding, padding
    ph, pw = _pair(padding)
    return (ph, 0), (0, pw)


class _TensorConv(Factorized):
    """Common parts of :class:`CPConv2d` and :class:`TuckerConv2d`: the replaced conv's geometry and the config."""

    scheme: str = ""

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride, padding, dilation, padding_mode,
                 full_rank, energy):  # fmt: skip
        super().__init__(rank, full_rank, energy)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode

    def _layers(self) -> tuple[nn.Conv2d, ...]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers():
            x = layer(x)
        return x

    def config(self) -> dict:
        return conv_config(self)

    def _copy_weights(self, factors: TensorFactors, bias: torch.Tensor | None):
        with torch.no_grad():
            for layer, w in zip(self._layers(), factors.weights, strict=True):
                layer.weight.copy_(w)
            if bias is not None:
                self.second.bias.copy_(bias)
        return self

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, rank: int, out_scale: torch.Tensor | None = None):
        """Factorize ``conv`` (groups 1, kernel larger than ``1 x 1``) at ``rank``, copying its bias."""
        _check_conv(conv)
        return cls.from_factors(conv, _DECOMPOSE[cls.scheme](conv.weight, rank, out_scale))

    @classmethod
    def from_factors(cls, conv: nn.Conv2d, factors: TensorFactors):
        """Build from precomputed :class:`TensorFactors` of ``conv.weight``, copying its bias."""
        _check_conv(conv)
        if factors.scheme != cls.scheme:
            raise ValueError(f"{cls.__name__} takes {cls.scheme!r} factors, got {factors.scheme!r} ones")
        w = conv.weight
        mod = nn.utils.skip_init(
            cls, w.shape[1], w.shape[0], conv.kernel_size, factors.rank, conv.stride, conv.padding, conv.dilation,
            conv.bias is not None, conv.padding_mode, factors.full_rank, factors.energy, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        return mod._copy_weights(factors, conv.bias)

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, " + super().extra_repr()


class CPConv2d(_TensorConv):
    """A Conv2d replaced by its rank-``rank`` CP factorization, as four standard convs.

    ``first``: ``Conv2d(C_in -> rank, 1)``; ``vertical``: depthwise ``Conv2d(rank -> rank, (kh, 1), groups=rank)``
    with the vertical stride, padding and dilation; ``horizontal``: depthwise ``(1, kw)`` with the horizontal ones;
    ``second``: ``Conv2d(rank -> C_out, 1)`` with the bias. Input (N, C_in, H, W) -> output (N, C_out, H', W'), as
    the dense conv; ``padding_mode`` applies where the depthwise convs pad.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode
        As in ``nn.Conv2d`` (groups 1).
    rank : int
        Number of rank-one terms, ``1 <= rank <= full_rank``.
    full_rank : int, optional
        Defaults to :func:`cp_full_rank` of the kernel's shape.
    energy : float, optional
        Kept energy ``1 - err**2`` of the fit, for reports.
    device, dtype
        Factory arguments of the convs.
    """

    scheme = "cp"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", full_rank: int | None = None,
                 energy: float | None = None, device=None, dtype=None):  # fmt: skip
        (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
        if full_rank is None:
            full_rank = cp_full_rank((out_channels, in_channels, kh, kw))
        super().__init__(in_channels, out_channels, (kh, kw), rank, (sh, sw), padding, (dh, dw), padding_mode,
                         full_rank, energy)  # fmt: skip
        pv, ph = _split_padding(self.padding)
        fk = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(in_channels, rank, 1, bias=False, **fk)
        self.vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), pv, (dh, 1), groups=rank, bias=False,
                                  padding_mode=padding_mode, **fk)  # fmt: skip
        self.horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), ph, (1, dw), groups=rank, bias=False,
                                    padding_mode=padding_mode, **fk)  # fmt: skip
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias, **fk)

    def _layers(self) -> tuple[nn.Conv2d, ...]:
        return self.first, self.vertical, self.horizontal, self.second

    def dense_weight(self) -> torch.Tensor:
        b, v = self.first.weight[:, :, 0, 0], self.vertical.weight[:, 0, :, 0]
        h, a = self.horizontal.weight[:, 0, 0, :], self.second.weight[:, :, 0, 0]
        return torch.einsum("oq,qc,qi,qj->ocij", a, b, v, h)


class TuckerConv2d(_TensorConv):
    """A Conv2d replaced by its Tucker-2 factorization, as three standard convs.

    ``first``: ``Conv2d(C_in -> r_in, 1)``; ``core``: ``Conv2d(r_in -> r_out, (kh, kw))`` with the stride, padding,
    dilation and padding mode; ``second``: ``Conv2d(r_out -> C_out, 1)`` with the bias. Input (N, C_in, H, W) ->
    output (N, C_out, H', W'), as the dense conv.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode
        As in ``nn.Conv2d`` (groups 1).
    rank : int
        ``1 <= rank <= full_rank``; sets ``(r_out, r_in) = tucker_ranks(out_channels, in_channels, rank)`` unless
        ``out_rank`` and ``in_rank`` are given.
    full_rank : int, optional
        Defaults to ``max(in_channels, out_channels)``.
    energy : float, optional
        Kept energy ``1 - err**2`` of the fit, for reports.
    out_rank, in_rank : int, optional
        Explicit mode ranks (positive; above the channel count only in shape-only skeletons that count FLOPs).
    device, dtype
        Factory arguments of the convs.
    """

    scheme = "tucker"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", full_rank: int | None = None,
                 energy: float | None = None, out_rank: int | None = None, in_rank: int | None = None, device=None,
                 dtype=None):  # fmt: skip
        if full_rank is None:
            full_rank = max(in_channels, out_channels)
        super().__init__(in_channels, out_channels, kernel_size, rank, stride, padding, dilation, padding_mode,
                         full_rank, energy)  # fmt: skip
        r_out, r_in = tucker_ranks(out_channels, in_channels, rank)
        r_out, r_in = out_rank or r_out, in_rank or r_in
        for name, r in (("out_rank", r_out), ("in_rank", r_in)):
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ConfigError(f"{name} must be a positive int, got {r!r}")
        self.out_rank, self.in_rank = int(r_out), int(r_in)
        fk = {"device": device, "dtype": dtype}
        self.first = nn.Conv2d(in_channels, r_in, 1, bias=False, **fk)
        self.core = nn.Conv2d(r_in, r_out, self.kernel_size, self.stride, self.padding, self.dilation, bias=False,
                              padding_mode=padding_mode, **fk)  # fmt: skip
        self.second = nn.Conv2d(r_out, out_channels, 1, bias=bias, **fk)

    def _layers(self) -> tuple[nn.Conv2d, ...]:
        return self.first, self.core, self.second

    def config(self) -> dict:
        return {**super().config(), "out_rank": self.out_rank, "in_rank": self.in_rank}

    def dense_weight(self) -> torch.Tensor:
        u_in, u_out = self.first.weight[:, :, 0, 0], self.second.weight[:, :, 0, 0]
        return torch.einsum("pqij,op,qc->ocij", self.core.weight, u_out, u_in)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", out_rank={self.out_rank}, in_rank={self.in_rank}"


_MODULES: dict[str, type[_TensorConv]] = {"cp": CPConv2d, "tucker": TuckerConv2d}


def tensor_factorized(conv: nn.Conv2d, fit: TensorFit, rank: int) -> CPConv2d | TuckerConv2d:
    """The replacement of ``conv`` at ``rank`` from its :class:`TensorFit` (the fit is reused when cached)."""
    return _MODULES[fit.scheme].from_factors(conv, fit.factors(rank))


def _check_conv(conv: nn.Module) -> None:
    if type(conv) is not nn.Conv2d or conv.groups != 1:
        raise ValueError(f"expected an nn.Conv2d with groups=1, got {type(conv).__name__}")
    if tuple(conv.kernel_size) == (1, 1):
        raise ValueError("a 1x1 conv is a matrix: factorize it with the 'channel' scheme (FactorizedConv2d)")

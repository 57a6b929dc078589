"""Rank allocation: which eligible layers :func:`smoothcompress.compress` factorizes, with which scheme and rank.

Inputs: a model, a ``rate`` (fraction of ALL parameters to remove, BatchNorm and biases included, in ``[0, 1)``)
and/or explicit ``ranks``, an ``allocation`` and a ``scheme``. Output: a :class:`Plan` (:func:`plan_compression`)
with a :class:`LayerPlan` per eligible layer; nothing is built. Eligible layers are plain ``nn.Conv2d`` with
``groups == 1``, ``nn.Linear`` and Linear-like modules such as ``transformers``' ``Conv1D`` (see
:mod:`smoothcompress.layers`), minus ``exclude`` (see :mod:`smoothcompress.selection`) and minus layers whose weight
is tied to another module's (factorizing one copy would add parameters); ``nn.MultiheadAttention`` is listed as
skipped. A layer is factorized only when that saves parameters, ``r * (rows + cols) < rows * cols``.

Let ``kept_l(r) = sum_{i<=r} s_i**2 / sum_i s_i**2`` be the fraction of layer ``l``'s spectral energy kept at
rank ``r``. With a ``calibration`` (:func:`smoothcompress.calibrate`) the ``s_i`` are the singular values of
``W L`` (``L L^T`` the layer's input moment), so ``kept_l`` is the fraction of the layer's *output* energy on the
calibration inputs, and every allocation below shares ranks out by output error. Allocations (:data:`ALLOCATIONS`,
each a registered :class:`Allocation`):

* ``"global"`` (default): all ranks chosen jointly to minimise ``sum_l -log kept_l(r_l)`` at the parameter
  budget, greedily along each layer's lower convex hull of (parameters saved, loss).
* ``"global-linear"``: the same greedy with loss ``sum_l (1 - kept_l)``.
* ``"uniform"``: the same fraction of the full rank in every layer.
* ``"energy"``: the same fraction of spectral energy in every layer.

Schemes (:data:`SCHEMES`): ``"channel"`` and ``"spatial"`` (see :mod:`smoothcompress.factorized`), or ``"auto"``:
per layer, whichever of the two loses less spectral energy at the same parameter cost; or the tensor schemes
``"cp"`` and ``"tucker"`` (see :mod:`smoothcompress.tensorfactor`, the ``tensor`` extra), which factorize every
conv with a kernel larger than ``1 x 1`` as a 4-way tensor and every other layer (``1 x 1`` convs, Linear layers,
where both reduce to an SVD) with the channel scheme. Their ``kept_l(r)`` is ``1 - err_l(r)**2``, ``err_l`` the
relative error of the CP or Tucker-2 fit at rank ``r``: fitted at a grid of ranks and interpolated between them
(:class:`~smoothcompress.tensorfactor.TensorFit`), so a plan's ``energy`` off the grid is an interpolation; the
built layer's ``energy`` is its own fit's. They take no ``calibration``.

The achieved rate is never below the request and overshoots it by at most about one rank step of one layer; a
rate the eligible layers cannot reach raises :class:`smoothcompress.accounting.RateUnreachable`.

FLOPs budget. ``flops`` (in ``(0, 1]``) is the fraction of the model's FLOPs (multiply-adds) to KEEP, where ``rate``
is the fraction of parameters to REMOVE. The FLOPs of every option are counted, never estimated by hand: one traced
forward pass on an example input of ``input_shape`` (known for registry models,
:func:`smoothcompress.models.default_input_shape`) gives each layer's dense FLOPs and its input shapes, and
:class:`~torch.utils.flop_counter.FlopCounterMode` counts each scheme's factorized layer on those shapes (meta
tensors). A factorized layer's FLOPs depend on its output size, so for the same parameters an early,
high-resolution layer saves more FLOPs than a late one. The objective is the same (``sum_l -log kept_l`` for
``"global"``); only the cost changes:

* ``flops`` alone: the greedy walks each layer's lower convex hull of (cost, loss) until the kept FLOPs are at most
  ``flops`` of the dense model's, with the cost of the next bullet for ``t = 0, 0.1, ..., 1`` (``t = 1``: FLOPs
  saved; ``t = 0``: parameters saved, i.e. the parameter-rate plan that first reaches the budget), and keeps the
  allocation with the least total loss, so it is never worse than a parameter rate of the same FLOPs;
  ``"uniform"`` and ``"energy"`` move their shared fraction until the budget holds.
* ``rate`` and ``flops``: the cost of an option is the weighted sum ``(1 - t) * params saved / all params +
  t * FLOPs saved / all FLOPs`` (a Lagrangian mix); for each ``t`` in ``0, 0.1, ..., 1`` the greedy walks the hulls
  of (cost, loss) and stops as soon as BOTH budgets hold, and the allocation with the least total loss is kept.
  One of the two budgets is then usually met with room to spare.

The kept FLOPs are never above the budget and undershoot it by about one rank step of one layer; a budget that
the eligible layers cannot reach (every layer at its cheapest rank, a multiple of ``rank_multiple``) raises
:class:`~smoothcompress.accounting.RateUnreachable` naming the smallest reachable fraction.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from smoothcompress.accounting import (
    RateUnreachable,
    bisect_boundary,
    check_rate,
    count_params,
    timed_input,
    trace_flops,
)
from smoothcompress.batchnorm import bn_scale, trace_bn_pairs
from smoothcompress.errors import ConfigError
from smoothcompress.factorized import (
    Decomposition,
    Factorized,
    FactorizedConv2d,
    FactorizedLinear,
    check_rank,
    decompose,
    effective_scheme,
    expand_row_weight,
    matricize,
)
from smoothcompress.inputs import ExampleInput, as_example
from smoothcompress.latency import (
    RUNTIMES,
    LatencyTable,
    LatencyUnreachable,
    Timing,
    check_latency,
    check_runtime,
    measure_table,
)
from smoothcompress.layers import is_linear_like, is_weight_layer, layer_weight, tied_weights
from smoothcompress.selection import Entries, select_layers, unwrap
from smoothcompress.tensorfactor import TENSOR_SCHEMES, CPConv2d, TensorFit, TuckerConv2d, tensor_scheme, tucker_ranks

if TYPE_CHECKING:
    from smoothcompress.calibration import Calibration

__all__ = [
    "SCHEMES",
    "ALLOCATIONS",
    "Allocation",
    "GlobalAllocation",
    "GlobalLinearAllocation",
    "SharedFractionAllocation",
    "UniformAllocation",
    "EnergyAllocation",
    "get_allocation",
    "DEFAULT_RATE",
    "requested_rate",
    "LayerPlan",
    "Plan",
    "plan_compression",
    "plan_ranks",
    "check_flops",
    "build_plan",
]

SCHEMES = ("channel", "spatial", "auto", *TENSOR_SCHEMES)
"""Factorization schemes accepted by :func:`smoothcompress.compress`: the matrix schemes of
:mod:`smoothcompress.factorized`, ``"auto"``, and the tensor schemes of :mod:`smoothcompress.tensorfactor`."""

_RATE_TOLERANCE = 0.01
_MIX_STEPS = 10  # rate and flops together: the weight t of the FLOPs in the cost goes 0, 1/10, ..., 1


DEFAULT_RATE = 0.7
"""The ``rate`` of :func:`plan_compression` and :func:`smoothcompress.compress` when no budget is given (no
``rate``, ``flops`` or ``ranks``; see :func:`requested_rate`)."""


def check_flops(flops) -> float:
    """``flops`` as a float, checked to be a FLOPs budget: the fraction of the dense FLOPs kept, in ``(0, 1]``."""
    if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not math.isfinite(flops):
        raise ConfigError(f"flops must be a number in (0, 1], got {flops!r}")
    if not 0.0 < flops <= 1.0:
        raise ConfigError(f"flops must be in (0, 1] (the fraction of the dense FLOPs kept, e.g. 0.5), got {flops}")
    return float(flops)


@dataclass(frozen=True)
class LayerPlan:
    """What compression does to one eligible layer.

    ``scheme`` and ``rank`` are ``None`` when the layer stays dense. ``params_before``/``params_after`` count the
    layer's weight only (its bias is unchanged). ``energy`` is the kept fraction of spectral energy (1.0 if dense).
    ``flops_before``/``flops_after`` are the layer's FLOPs on the example input, when FLOPs were counted;
    ``time_before``/``time_after`` its measured seconds per forward pass (latency table), when measured.
    """

    name: str
    scheme: str | None
    rank: int | None
    full_rank: int
    energy: float
    params_before: int
    params_after: int
    flops_before: int | None = None
    flops_after: int | None = None
    time_before: float | None = None
    time_after: float | None = None


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
    flops_before, flops_after : int or None
        FLOPs of one forward pass of the whole model on the example input (``input_shape``) before and after;
        ``None`` when FLOPs were not counted (no ``flops`` budget and no ``input_shape`` given).
    input_shape : tuple of int or None
        The example input the FLOPs were counted on, batch included.
    latency : dict or None
        With a latency budget: the request, runtime, the table's predicted fraction of the dense time, its dense
        and fixed seconds, the rank multiple chosen and the candidates compared, and the table's provenance
        (:class:`smoothcompress.latency.LatencyTable`); ``None`` otherwise.
    table : LatencyTable or None
        With a latency budget, the measured table itself (``table.plan_time(plan.layers)``: seconds of a plan).
    """

    layers: dict[str, LayerPlan]
    notes: dict[str, str]
    params_before: int
    params_after: int
    bn_pairs: dict[str, str] = field(default_factory=dict)
    bn_note: str | None = None
    flops_before: int | None = None
    flops_after: int | None = None
    input_shape: tuple[int, ...] | None = None
    latency: dict | None = None
    table: LatencyTable | None = field(default=None, repr=False)

    @property
    def rate(self) -> float:
        """Fraction of all parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def flops_fraction(self) -> float | None:
        """Fraction of the model's FLOPs kept, or ``None`` when FLOPs were not counted."""
        if self.flops_before is None or self.flops_after is None:
            return None
        return self.flops_after / self.flops_before if self.flops_before else 1.0

    def flops_details(self) -> dict:
        """The FLOP counts for a record's ``details``: totals before and after, and the example input's shape."""
        shape = None if self.input_shape is None else list(self.input_shape)
        return {"before": self.flops_before, "after": self.flops_after, "input_shape": shape}

    def ranks(self) -> dict[str, int]:
        """``{name: rank}`` of the layers that get factorized."""
        return {n: p.rank for n, p in self.layers.items() if p.rank is not None}


class _Option(NamedTuple):
    saving: int  # weight params saved vs dense
    loss: float  # normalised energy lost, in [0, 1]
    scheme: str | None  # None: dense
    rank: int | None
    flops_saving: int = 0  # FLOPs saved vs dense on the example input (0 when FLOPs are not counted)
    time_saving: float = 0.0  # measured seconds saved vs dense (0 when no latency table)


class _Flops(NamedTuple):
    """A layer's FLOPs on the example input: dense, and factorized at rank ``r`` by scheme."""

    dense: int
    after: dict[str, Callable[[int], int]]  # scheme -> FLOPs at rank r


def _params_key(o: _Option) -> float:
    return o.saving


def _flops_key(o: _Option) -> float:
    return o.flops_saving


def _time_key(o: _Option) -> float:
    return o.time_saving


@dataclass
class _Layer:
    name: str
    module: nn.Module
    dense: int  # weight params
    decs: dict[str, Decomposition | TensorFit]  # by scheme
    kept: dict[str, list[float]]  # kept energy fraction at rank 1..R, by scheme
    log_loss: bool  # loss -log(kept) if True, else 1 - kept
    multiple: int  # allocated ranks are multiples of this
    options: list[_Option]  # dense first, then every allowed (scheme, rank) that saves params
    flops: _Flops | None = None  # None: FLOPs not counted
    top: dict[str, int] = field(default_factory=dict)  # by scheme: the largest rank that saves params
    dense_time: float | None = None  # measured seconds of the dense layer (None: no latency table)
    time_of: Callable[[str, int], float] | None = None  # measured seconds at (scheme, rank)

    def params(self, scheme: str, rank: int) -> int:
        """Weight parameters of the factors at ``rank``."""
        dec = self.decs[scheme]
        if isinstance(dec, TensorFit):
            return dec.params(rank)
        m, n = dec.matrix.shape
        return rank * (m + n)

    def max_rank(self, scheme: str) -> int:
        """The largest rank whose factors have fewer parameters than the dense weight (0: none)."""
        dec = self.decs[scheme]
        if isinstance(dec, TensorFit):
            return dec.max_rank
        return min(dec.full_rank, (self.dense - 1) // self.params(scheme, 1))

    def flops_after(self, o: _Option) -> int | None:
        if self.flops is None:
            return None
        if o.scheme is None:
            return self.flops.dense
        return self.flops.after[o.scheme](o.rank)

    def option(self, scheme: str, rank: int) -> _Option:
        saving = self.dense - self.params(scheme, rank)
        if saving <= 0:
            return self.options[0]
        kept = self.kept[scheme][rank - 1]
        loss = -math.log(max(kept, 1e-300)) if self.log_loss else 1.0 - kept
        flops_saving = 0
        if self.flops is not None:
            flops_saving = self.flops.dense - self.flops.after[scheme](rank)
        time_saving = 0.0
        if self.time_of is not None:
            time_saving = self.dense_time - self.time_of(scheme, rank)
        return _Option(saving, loss, scheme, rank, flops_saving, time_saving)

    def set_options(self, multiple: int) -> None:
        """Dense, then every scheme's ranks that are multiples of ``multiple`` and save parameters."""
        self.multiple = multiple
        self.options = [self.options[0]]
        for s, top in self.top.items():
            opts = (self.option(s, r) for r in range(multiple, top + 1, multiple))
            self.options += [o for o in opts if o.scheme is not None]

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

    def best_meeting(self, params: float, flops: float, key, seconds: float = -math.inf) -> _Option | None:
        """The least-loss option saving at least ``params`` parameters, ``flops`` FLOPs and ``seconds`` of measured
        time (ties: smaller key)."""
        ok = [o for o in self.options if o.saving >= params and o.flops_saving >= flops and o.time_saving >= seconds]
        return min(ok, key=lambda o: (o.loss, key(o))) if ok else None


_MHA_NOTE = (
    "nn.MultiheadAttention: its forward uses the packed in_proj_weight (q, k, v) and out_proj.weight directly, so "
    "neither can be replaced by factors"
)

_READ_DIRECTLY: dict[type, tuple[str, ...]] = {
    nn.MultiheadAttention: ("out_proj",),
    nn.TransformerEncoderLayer: ("linear1", "linear2"),  # its eval-mode fast path passes their weights to a kernel
}
"""Parent classes whose forward reads these children's ``.weight`` itself: the children must stay dense."""


def _eligible(model: nn.Module, exclude: Entries) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Eligible layers by name, and a status note for every other weight layer."""
    named = list(model.named_modules())
    inside_factorized = [name + "." for name, m in named if isinstance(m, Factorized)]
    read_directly = {
        f"{name}.{child}" if name else child: f"{type(m).__name__}'s forward reads {child}.weight directly"
        for name, m in named
        for parent, children in _READ_DIRECTLY.items()
        if isinstance(m, parent)
        for child in children
    }
    tied = tied_weights(model)

    def ineligible(name: str, m: nn.Module) -> str | None:
        if any(name.startswith(p) for p in inside_factorized):
            return "already factorized"
        if isinstance(m, nn.MultiheadAttention):
            return _MHA_NOTE
        if name in read_directly:
            return read_directly[name]
        if type(m) is nn.Conv2d and m.groups != 1:
            kind = "depthwise" if m.groups == m.in_channels else "grouped"
            return f"{kind} conv (groups={m.groups})"
        if type(m) is nn.Conv2d or is_linear_like(m):
            if name in tied:
                return f"weight tied to {tied[name][0]} (factorizing it would add parameters)"
            return None
        return f"unsupported layer type {type(m).__name__}"

    sel = select_layers(model, exclude=exclude, types=is_weight_layer, ineligible=ineligible)
    return sel.chosen, {name: f"skipped: {why}" for name, why in sel.skipped.items()}


def _skeleton(module: nn.Module, scheme: str, rank: int, in_rank: int | None = None) -> nn.Module:
    """A factorized replacement of ``module`` at ``rank`` on the meta device (shapes only), for counting FLOPs.

    Any rank is allowed (``full_rank=rank``): FLOPs are linear in the rank (ranks 1 and 2 give the line), and for
    Tucker-2 bilinear in the mode ranks (``rank`` is then the output rank, ``in_rank`` the input one)."""
    w = layer_weight(module)
    if is_linear_like(module):
        return FactorizedLinear(w.shape[1], w.shape[0], rank, False, rank, device="meta", dtype=w.dtype)
    geometry = (module.stride, module.padding, module.dilation)
    fk = {"padding_mode": module.padding_mode, "device": "meta", "dtype": w.dtype}
    if scheme == "cp":
        return CPConv2d(w.shape[1], w.shape[0], module.kernel_size, rank, *geometry, False, full_rank=rank, **fk)
    if scheme == "tucker":
        return TuckerConv2d(
            w.shape[1], w.shape[0], module.kernel_size, 1, *geometry, False, out_rank=rank, in_rank=in_rank, **fk
        )
    return FactorizedConv2d(
        w.shape[1], w.shape[0], module.kernel_size, rank, *geometry, bias=False, scheme=scheme, full_rank=rank, **fk
    )


def _count_meta(module: nn.Module, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        for shape in shapes:
            module(torch.empty(shape, device="meta", dtype=dtype))
    return int(counter.get_total_flops())


def _layer_schemes(shape: torch.Size | tuple, scheme: str) -> tuple[str, ...]:
    """The schemes a layer of this weight shape is factorized with under ``scheme``, channel first."""
    wanted = ("channel", "spatial") if scheme == "auto" else (scheme,)
    return tuple(dict.fromkeys(tensor_scheme(shape, effective_scheme(shape, s)) for s in wanted))


def _flops_at(m: nn.Module, s: str, shapes: list, dtype: torch.dtype) -> Callable[[int], int]:
    """FLOPs of ``m``'s factorization in scheme ``s`` as a function of the rank, from a few counted skeletons."""
    if s == "tucker":  # bilinear in (r_out, r_in): four corners give it exactly
        w = layer_weight(m)
        (f11, f12), (f21, f22) = [[_count_meta(_skeleton(m, s, o, i), shapes, dtype) for i in (1, 2)] for o in (1, 2)]
        cross, d_out, d_in = f22 - f21 - f12 + f11, f21 - f11, f12 - f11
        base = f11 - d_out - d_in + cross  # the value at (0, 0)
        d_out, d_in = d_out - cross, d_in - cross  # slopes at 0

        def tucker(r: int) -> int:
            r_out, r_in = tucker_ranks(w.shape[0], w.shape[1], r)
            return base + d_out * r_out + d_in * r_in + cross * r_out * r_in

        return tucker
    one, two = (_count_meta(_skeleton(m, s, r), shapes, dtype) for r in (1, 2))
    base, per_rank = 2 * one - two, two - one
    return lambda r: base + per_rank * r


def _flop_model(
    model: nn.Module, modules: dict[str, nn.Module], example: ExampleInput, scheme: str
) -> tuple[int, dict[str, _Flops]]:
    """Total FLOPs of ``model`` on ``example``, and each eligible layer's :class:`_Flops` by scheme.

    One traced forward pass gives the dense FLOPs and the input shapes of every call of each layer; each scheme's
    factorized layer is then counted on those shapes at ranks 1 and 2 (FLOPs are linear in the rank), or for
    Tucker-2 at mode ranks (1 or 2, 1 or 2) (bilinear in them).
    """
    by_module, shapes = trace_flops(model, inputs_of=modules, example=example)
    out = {}
    for name, m in modules.items():
        dtype = layer_weight(m).dtype
        after = {s: _flops_at(m, s, shapes[name], dtype) for s in _layer_schemes(layer_weight(m).shape, scheme)}
        out[name] = _Flops(by_module.get(name, 0), after)
    return by_module[""], out


def _flops_example(model: nn.Module, input_shape, flops, example) -> ExampleInput | None:
    """The input FLOPs are counted on (:func:`smoothcompress.inputs.as_example`): ``example``, else a zero input of
    ``input_shape``, else (with a ``flops`` budget) of the registry's shape; ``None`` when FLOPs are not counted."""
    if example is None and input_shape is None and flops is None:
        return None
    return as_example(model, example, input_shape)


def _analyse(
    model: nn.Module,
    scheme: str,
    exclude: Entries,
    bn_aware: bool,
    log_loss: bool,
    multiple: int,
    calibration: Calibration | None = None,
    example: ExampleInput | None = None,
) -> tuple[list[_Layer], dict[str, str], dict[str, str], str | None, int | None]:
    modules, notes = _eligible(model, exclude)
    centered: set[str] = set()  # layers truncated in the metric of their centered inputs (see Calibration.center)
    if calibration is not None:
        calibration.check(model, modules)
        if calibration.center:
            centered = set(trace_bn_pairs(model)[0])
    total_flops, flop_models = _flop_model(model, modules, example, scheme) if example is not None else (None, {})
    bn_pairs, bn_note = trace_bn_pairs(model) if bn_aware and modules else ({}, None)
    bn_pairs = {k: v for k, v in bn_pairs.items() if k in modules}
    named = dict(model.named_modules())
    layers = []
    for name, m in modules.items():
        w = layer_weight(m).detach()
        out_scale = bn_scale(named[bn_pairs[name]]) if name in bn_pairs else None
        decs, kept = {}, {}
        for s in _layer_schemes(w.shape, scheme):
            if s in TENSOR_SCHEMES:
                decs[s] = TensorFit(w, s, out_scale)
            else:
                moment = calibration.moment(name, s, name in centered) if calibration is not None else None
                decs[s] = decompose(matricize(w, s), expand_row_weight(out_scale, w, s), moment)
            kept[s] = decs[s].kept_energy().tolist()
        flop_model = flop_models.get(name)
        dense = _Option(0, 0.0, None, None)
        layer = _Layer(name, m, w.numel(), decs, kept, log_loss, multiple, [dense], flop_model)
        for s in decs:
            r_max = layer.max_rank(s)
            layer.top[s] = r_max
            # a rank above r_max saves nothing (option() keeps the layer dense), so its basis columns are never
            # used: keep only the first r_max (about half of a square layer's), which bounds compress's memory
            if isinstance(decs[s], Decomposition) and decs[s].basis.shape[1] > max(r_max, 1):
                decs[s].basis = decs[s].basis[:, : max(r_max, 1)].clone()
        layer.set_options(multiple)
        layers.append(layer)
    return layers, notes, bn_pairs, bn_note, total_flops


def _lower_hull(options: list[_Option], key=_params_key) -> list[_Option]:
    """Vertices of the lower convex hull of (key, loss), from the dense option (key 0) to the largest key.

    ``key`` is the saving that the greedy spends: parameters saved (default), FLOPs saved, or a mix of the two.
    Options with a negative key (e.g. a spatial factorization that costs more FLOPs than the dense layer) are left
    out.
    """
    best: dict[float, _Option] = {}
    for o in options:
        k = key(o)
        if k >= 0 and (k not in best or o.loss < best[k].loss):
            best[k] = o
    hull: list[_Option] = []
    for p in sorted(best.values(), key=lambda o: (key(o), o)):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            if (key(a) - key(o)) * (p.loss - o.loss) - (a.loss - o.loss) * (key(p) - key(o)) > 0:
                break
            hull.pop()
        hull.append(p)
    return hull


def _allocate_global(
    layers: list[_Layer], need: float, need_flops: float = -math.inf, key=_params_key, need_time: float = -math.inf
) -> dict[str, _Option] | None:
    """Greedy along each layer's lower hull of (``key``, loss), least loss per unit of key first, until the choices
    save at least ``need`` parameters, ``need_flops`` FLOPs and ``need_time`` seconds; ``None`` if the hulls end
    first.

    The step that meets every budget is refined: its layer takes the least-loss option that still meets them.
    """
    choice = {lay.name: lay.options[0] for lay in layers}
    if need <= 0 and need_flops <= 0 and need_time <= 0:
        return choice
    steps = []
    for i, lay in enumerate(layers):
        hull = _lower_hull(lay.options, key)
        for j in range(1, len(hull)):
            ds, dl = key(hull[j]) - key(hull[j - 1]), hull[j].loss - hull[j - 1].loss
            steps.append((dl / ds, i, j, hull[j]))
    steps.sort(key=lambda t: t[:3])
    saved = saved_flops = saved_time = 0
    for _, i, _, vertex in steps:
        lay = layers[i]
        old = choice[lay.name]
        rest, rest_flops = saved - old.saving, saved_flops - old.flops_saving  # the other layers' savings
        rest_time = saved_time - old.time_saving
        if (
            rest + vertex.saving >= need
            and rest_flops + vertex.flops_saving >= need_flops
            and rest_time + vertex.time_saving >= need_time
        ):
            met = lay.best_meeting(need - rest, need_flops - rest_flops, key, need_time - rest_time)
            if met is None:  # the budgets sit at the very edge of reach: float rounding left no option meeting them
                return None
            choice[lay.name] = met
            return choice
        choice[lay.name] = vertex
        saved, saved_flops = rest + vertex.saving, rest_flops + vertex.flops_saving
        saved_time = rest_time + vertex.time_saving
    return None


def _mixed_key(t: float, params_total: int, flops_total: int):
    """The cost of an option when both budgets apply: ``(1 - t) * params saved / params + t * FLOPs saved / FLOPs``."""
    return _mix(t, _params_key, params_total, _flops_key, flops_total)


def _mix(t: float, key_a, total_a: float, key_b, total_b: float):
    """The cost ``(1 - t) * key_a / total_a + t * key_b / total_b`` (``key_a`` at ``t = 0``, ``key_b`` at 1)."""
    if t == 0.0:
        return key_a
    if t == 1.0:
        return key_b
    total_a, total_b = total_a or 1, total_b or 1
    return lambda o: (1.0 - t) * key_a(o) / total_a + t * key_b(o) / total_b


def _allocate_time(
    layers: list[_Layer], needs: tuple[float, float, float], totals: tuple[int, int | None, float]
) -> dict[str, _Option] | None:
    """The least-loss :func:`_allocate_global` that meets the time budget and any parameter and FLOPs budget, over
    the walks by mixes of time with parameters (``t = 0``: the parameter-rate walk) and with FLOPs."""
    need, need_flops, need_time = needs
    params_total, flops_total, time_total = totals
    keys = [_mix(i / _MIX_STEPS, _params_key, params_total, _time_key, time_total) for i in range(_MIX_STEPS + 1)]
    if flops_total:
        keys += [_mix(i / _MIX_STEPS, _flops_key, flops_total, _time_key, time_total) for i in range(_MIX_STEPS)]
    found = [_allocate_global(layers, need, need_flops, key, need_time) for key in keys]
    found.append(_best_rate_plan(layers, needs))
    best, best_loss = None, math.inf
    for choice in found:
        loss = math.inf if choice is None else sum(o.loss for o in choice.values())
        if loss < best_loss:
            best, best_loss = choice, loss
    return best


def _best_rate_plan(layers: list[_Layer], needs: tuple[float, float, float]) -> dict[str, _Option] | None:
    """The least-loss plan that the parameter budget (:func:`_allocate_global` by parameters) gives at some rate
    and that meets ``needs``, or ``None``: each step of its walk, with the step's layer at any option between its
    previous vertex and the next (the refinement of the step that meets a rate picks one of these)."""
    need, need_flops, need_time = needs
    choice = {lay.name: lay.options[0] for lay in layers}
    sums = [0.0, 0.0, 0.0, 0.0]  # parameters, FLOPs and seconds saved, loss
    steps = []
    for i, lay in enumerate(layers):
        hull = _lower_hull(lay.options)
        for j in range(1, len(hull)):
            ds, dl = hull[j].saving - hull[j - 1].saving, hull[j].loss - hull[j - 1].loss
            steps.append((dl / ds, i, j, hull[j]))
    steps.sort(key=lambda t: t[:3])
    by_saving = [sorted(lay.options, key=lambda o: o.saving) for lay in layers]
    savings = [[o.saving for o in opts] for opts in by_saving]
    best, best_loss = None, math.inf
    for _, i, _, vertex in steps:
        lay = layers[i]
        old = choice[lay.name]
        rest = [sums[0] - old.saving, sums[1] - old.flops_saving, sums[2] - old.time_saving, sums[3] - old.loss]
        lo, hi = bisect.bisect_right(savings[i], old.saving), bisect.bisect_right(savings[i], vertex.saving)
        for o in by_saving[i][lo:hi]:
            meets = (
                rest[0] + o.saving >= need
                and rest[1] + o.flops_saving >= need_flops
                and rest[2] + o.time_saving >= need_time
            )
            if meets and rest[3] + o.loss < best_loss:
                best, best_loss = {**choice, lay.name: o}, rest[3] + o.loss
        choice[lay.name] = vertex
        sums = [rest[0] + vertex.saving, rest[1] + vertex.flops_saving, rest[2] + vertex.time_saving]
        sums.append(rest[3] + vertex.loss)
    return best


def _allocate_both(
    layers: list[_Layer], need: float, need_flops: float, params_total: int, flops_total: int
) -> dict[str, _Option] | None:
    """The least-loss :func:`_allocate_global` that meets both budgets over the mixes ``t = 0, 0.1, ..., 1``."""
    best, best_loss = None, math.inf
    for step in range(_MIX_STEPS + 1):
        choice = _allocate_global(layers, need, need_flops, _mixed_key(step / _MIX_STEPS, params_total, flops_total))
        loss = math.inf if choice is None else sum(o.loss for o in choice.values())
        if loss < best_loss:
            best, best_loss = choice, loss
    return best


def _allocate_by(
    layers: list[_Layer],
    need: float,
    rule,
    need_flops: float = -math.inf,
    key=_params_key,
    need_time: float = -math.inf,
) -> dict[str, _Option]:
    """Choices of a one-parameter rule (a rank or energy fraction shared by all layers) that save ``need``
    parameters and ``need_flops`` FLOPs.

    Layers of equal size change rank at the same parameter value, so the saving jumps there. Between the two sides
    of the jump, layers are moved one by one (least loss per unit of ``key`` first) and stop as soon as both
    budgets are met: every layer still follows the rule to within one step.
    """
    if need <= 0 and need_flops <= 0 and need_time <= 0:
        return {lay.name: lay.options[0] for lay in layers}

    def met(choices) -> bool:
        choices = list(choices)
        return (
            sum(o.saving for o in choices) >= need
            and sum(o.flops_saving for o in choices) >= need_flops
            and sum(o.time_saving for o in choices) >= need_time
        )

    lo, hi = bisect_boundary(lambda x: met([rule(lay, x) for lay in layers]))
    choice = {lay.name: rule(lay, hi) for lay in layers}
    moves = []
    for lay in layers:
        a, b = choice[lay.name], rule(lay, lo)
        if key(b) > key(a):
            moves.append(((b.loss - a.loss) / (key(b) - key(a)), lay.name, b))
    for _, name, b in sorted(moves, key=lambda t: t[:2]):
        if met(choice.values()):
            break
        choice[name] = b
    if not met(choice.values()):  # a rule whose saving is not monotone in its parameter (scheme="auto", time)
        choice = {lay.name: rule(lay, lo) for lay in layers}
    return choice


# ------------------------------------------------------------------------------------------------------------
# The allocation strategies


class Allocation:
    """A rank allocation strategy: how the free layers' ranks are chosen to meet a budget.

    Each strategy is registered once in :data:`ALLOCATIONS` under its :attr:`name` (:func:`get_allocation`) and
    answers four questions about a list of eligible layers: the choices that save a number of parameters
    (:meth:`for_params`), a number of FLOPs (:meth:`for_flops`) or both (:meth:`for_both`), and the most it can
    save (:meth:`max_saving`). A choice maps each layer's name to one of its options (dense, or a scheme and a
    rank); ``None`` means the budget is out of reach.
    """

    name: ClassVar[str]
    """The name ``compress(..., allocation=...)`` takes."""
    log_loss: ClassVar[bool] = True
    """A layer's loss at a rank: ``-log kept`` when true, else ``1 - kept`` (``kept``: its spectral energy kept)."""

    def for_params(self, layers: list[_Layer], need: float) -> dict[str, _Option] | None:
        """Choices that save at least ``need`` weight parameters."""
        raise NotImplementedError

    def for_flops(
        self, layers: list[_Layer], need_flops: float, params_total: int, flops_total: int
    ) -> dict[str, _Option] | None:
        """Choices that save at least ``need_flops`` FLOPs (``params_total``, ``flops_total``: the model's totals)."""
        raise NotImplementedError

    def for_both(
        self, layers: list[_Layer], need: float, need_flops: float, params_total: int, flops_total: int
    ) -> dict[str, _Option] | None:
        """Choices that save at least ``need`` weight parameters and ``need_flops`` FLOPs."""
        raise NotImplementedError

    def for_time(
        self, layers: list[_Layer], needs: tuple[float, float, float], totals: tuple[int, int | None, float]
    ) -> dict[str, _Option] | None:
        """Choices that save at least ``needs = (parameters, FLOPs, seconds)`` (``-inf``: no such budget);
        ``totals``: the model's parameters, FLOPs and measured seconds."""
        raise NotImplementedError

    def max_saving(self, layers: list[_Layer], key: Callable[[_Option], float] = _params_key) -> float:
        """The most the strategy can save, in units of ``key`` (parameters by default, FLOPs or seconds)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


ALLOCATIONS: dict[str, Allocation] = {}
"""The registered rank allocation strategies by name, in the order the documentation lists them."""


def _registered(cls: type[Allocation]) -> type[Allocation]:
    ALLOCATIONS[cls.name] = cls()
    return cls


def get_allocation(name: str) -> Allocation:
    """The registered :class:`Allocation` called ``name``; ``ValueError`` (one line) naming the choices otherwise."""
    if not isinstance(name, str) or name not in ALLOCATIONS:
        raise ConfigError(f"unknown allocation {name!r}; choose one of {', '.join(map(repr, ALLOCATIONS))}")
    return ALLOCATIONS[name]


@_registered
class GlobalAllocation(Allocation):
    """``"global"``: all ranks chosen jointly to minimise ``sum_l -log kept_l``, greedily along the layers' hulls."""

    name: ClassVar[str] = "global"

    def for_params(self, layers: list[_Layer], need: float) -> dict[str, _Option] | None:
        return _allocate_global(layers, need)

    def for_flops(
        self, layers: list[_Layer], need_flops: float, params_total: int, flops_total: int
    ) -> dict[str, _Option] | None:
        # the least-loss of the greedy walks by FLOPs (t = 1), by parameters (t = 0: the parameter-rate plan that
        # first reaches the budget) and their mixes: never worse than a parameter rate of equal FLOPs
        return _allocate_both(layers, -math.inf, need_flops, params_total, flops_total)

    def for_both(
        self, layers: list[_Layer], need: float, need_flops: float, params_total: int, flops_total: int
    ) -> dict[str, _Option] | None:
        return _allocate_both(layers, need, need_flops, params_total, flops_total)

    def for_time(
        self, layers: list[_Layer], needs: tuple[float, float, float], totals: tuple[int, int | None, float]
    ) -> dict[str, _Option] | None:
        # the least-loss of the walks by time, by parameters (the parameter-rate plan that first meets the budgets),
        # by FLOPs and their mixes: never worse than any of them
        return _allocate_time(layers, needs, totals)

    def max_saving(self, layers: list[_Layer], key: Callable[[_Option], float] = _params_key) -> float:
        return sum(max(key(o) for o in lay.options) for lay in layers)


@_registered
class GlobalLinearAllocation(GlobalAllocation):
    """``"global-linear"``: the greedy of ``"global"`` with the loss ``sum_l (1 - kept_l)``."""

    name: ClassVar[str] = "global-linear"
    log_loss: ClassVar[bool] = False


class SharedFractionAllocation(Allocation):
    """A strategy with one parameter that every layer shares (a fraction of its rank or of its energy).

    :meth:`choose` gives a layer's option at a value of that parameter; the budgets move it until they hold.
    """

    def choose(self, lay: _Layer, fraction: float) -> _Option:
        """``lay``'s option at the shared ``fraction`` (0: the most saving)."""
        raise NotImplementedError

    def for_params(self, layers: list[_Layer], need: float) -> dict[str, _Option] | None:
        return _allocate_by(layers, need, self.choose)

    def for_flops(
        self, layers: list[_Layer], need_flops: float, params_total: int, flops_total: int
    ) -> dict[str, _Option] | None:
        return _allocate_by(layers, -math.inf, self.choose, need_flops, _flops_key)

    def for_both(
        self, layers: list[_Layer], need: float, need_flops: float, params_total: int, flops_total: int
    ) -> dict[str, _Option] | None:
        return _allocate_by(layers, need, self.choose, need_flops, _mixed_key(0.5, params_total, flops_total))

    def for_time(
        self, layers: list[_Layer], needs: tuple[float, float, float], totals: tuple[int, int | None, float]
    ) -> dict[str, _Option] | None:
        choice = _allocate_by(layers, needs[0], self.choose, needs[1], _time_key, needs[2])
        saved = [sum(key(o) for o in choice.values()) for key in (_params_key, _flops_key, _time_key)]
        return choice if all(s >= n for s, n in zip(saved, needs, strict=True)) else None

    def max_saving(self, layers: list[_Layer], key: Callable[[_Option], float] = _params_key) -> float:
        return sum(key(self.choose(lay, 0.0)) for lay in layers)


@_registered
class UniformAllocation(SharedFractionAllocation):
    """``"uniform"``: the same fraction of the full rank in every layer."""

    name: ClassVar[str] = "uniform"

    def choose(self, lay: _Layer, fraction: float) -> _Option:
        main = "channel" if "channel" in lay.decs else next(iter(lay.decs))
        opt = lay.option(main, lay.snap(main, round(fraction * lay.decs[main].full_rank), up=False))
        return lay.best_with_saving(opt.saving) if len(lay.decs) > 1 and opt.scheme else opt


@_registered
class EnergyAllocation(SharedFractionAllocation):
    """``"energy"``: the same fraction of spectral energy in every layer."""

    name: ClassVar[str] = "energy"

    def choose(self, lay: _Layer, fraction: float) -> _Option:
        opts = []
        for s, kept in lay.kept.items():
            opts.append(lay.option(s, lay.snap(s, bisect.bisect_left(kept, fraction) + 1, up=True)))
        return max(opts, key=lambda o: (o.saving, -o.loss))


# ------------------------------------------------------------------------------------------------------------
# The plan


def requested_rate(
    rate: float | None, flops: float | None, ranks: Mapping[str, int] | None, latency: float | None = None
) -> float | None:
    """The parameter rate a call asks for: ``rate`` as given, or :data:`DEFAULT_RATE` when no budget is given at
    all (``rate``, ``flops`` and ``latency`` ``None`` and no explicit ``ranks``)."""
    if rate is None and flops is None and latency is None and not ranks:
        return DEFAULT_RATE
    return rate


def _check_args(rate, allocation: str, scheme: str, flops, rank_multiple) -> Allocation:
    """Check the arguments that need no model; the :class:`Allocation` named ``allocation``."""
    if rate is not None:
        check_rate(rate)
    if flops is not None:
        check_flops(flops)
    strategy = get_allocation(allocation)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown scheme {scheme!r}; choose one of {', '.join(map(repr, SCHEMES))}")
    if rank_multiple is not None and (
        isinstance(rank_multiple, bool) or not isinstance(rank_multiple, int) or rank_multiple < 1
    ):
        raise ConfigError(f"rank_multiple must be a positive int (e.g. 8 or 16 for CPU speed), got {rank_multiple!r}")
    return strategy


def _check_latency_args(latency, runtime, timing, input_shape, example) -> Timing:
    """Check a latency budget's arguments (before any work); the :class:`~smoothcompress.latency.Timing`."""
    check_latency(latency)
    timing = Timing() if timing is None else timing
    if not isinstance(timing, Timing):
        raise ConfigError(f"timing must be a smoothcompress.latency.Timing, got {type(timing).__name__}")
    if timing.timer is None:
        check_runtime(runtime)
    elif runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(map(repr, RUNTIMES))}")
    if input_shape is None and example is None:
        raise ConfigError(
            "a latency budget needs the input to time: pass input_shape=(batch, C, H, W) with the batch size you "
            "will run (or example=, any model input)"
        )
    return timing


def _check_ranks(ranks: Mapping[str, int], by_name: Mapping[str, _Layer], notes: Mapping[str, str]) -> None:
    """Every layer named by ``ranks`` is eligible."""
    for name in ranks:
        if name not in by_name:
            why = f" ({notes[name]})" if name in notes else ""
            shown = ", ".join(list(by_name)[:8]) + (", ..." if len(by_name) > 8 else "")
            raise ConfigError(f"ranks names {name!r}, which is not an eligible layer{why}; eligible: {shown}")


def _pinned_option(lay: _Layer, rank: int, scheme: str) -> _Option:
    main = "channel" if scheme == "auto" or scheme not in lay.decs else scheme
    check_rank(rank, lay.decs[main].full_rank, lay.name)
    opt = lay.option(main, rank)
    return lay.best_with_saving(opt.saving) if scheme == "auto" and opt.scheme else opt


def _flops_need(
    flops: float | None,
    flops_total: int | None,
    pinned: Mapping[str, _Option],
    free: list[_Layer],
    strategy: Allocation,
    scheme: str,
    rank_multiple: int,
    skipped: int,
) -> float:
    """The FLOPs the free layers must save (``-inf`` without a FLOPs budget); ``RateUnreachable`` if they cannot."""
    if flops is None:
        return -math.inf
    pinned_flops = sum(o.flops_saving for o in pinned.values())
    kept = math.floor(flops * flops_total)
    need_flops = flops_total - kept - pinned_flops
    best = flops_total - pinned_flops - strategy.max_saving(free, _flops_key)  # least FLOPs reachable
    if need_flops > 0 and best > kept:
        raise RateUnreachable(
            f"flops {flops} is out of reach: with allocation={strategy.name!r}, scheme={scheme!r} and "
            f"rank_multiple={rank_multiple} the eligible layers keep at least {best / flops_total:.4f} of the "
            f"FLOPs (every layer at its cheapest rank; {skipped} weight layers skipped or excluded). Ask for "
            f"flops of at least {math.ceil(best / flops_total * 1000) / 1000:.3f}."
        )
    return need_flops


def _params_need(
    rate: float | None,
    total: int,
    pinned: Mapping[str, _Option],
    free: list[_Layer],
    strategy: Allocation,
    scheme: str,
    skipped: int,
) -> float:
    """The parameters the free layers must save (``-inf`` without a rate); ``RateUnreachable`` if they cannot."""
    if rate is None:
        return -math.inf
    target = math.ceil(rate * total)
    pinned_saving = sum(o.saving for o in pinned.values())
    if pinned_saving > target + _RATE_TOLERANCE * total:
        raise ConfigError(
            f"the explicit ranks alone remove {pinned_saving / total:.4f} of the parameters, more than the "
            f"requested rate {rate}; raise the rate or pass rate=None to apply only the explicit ranks"
        )
    need = target - pinned_saving
    reachable = pinned_saving + strategy.max_saving(free)
    if need > 0 and reachable < target:
        raise RateUnreachable(
            f"rate {rate} is out of reach: with allocation={strategy.name!r} and scheme={scheme!r} the eligible "
            f"layers can remove at most {reachable / total:.4f} of the parameters (every layer at rank 1; "
            f"{skipped} weight layers skipped or excluded). Ask for a rate of at most "
            f"{math.floor(reachable / total * 1000) / 1000:.3f}."
        )
    return need


def _time_need(
    latency: float | None,
    time_total: float | None,
    pinned: Mapping[str, _Option],
    free: list[_Layer],
    strategy: Allocation,
    where: str,
    fixed: float,
) -> float:
    """The seconds the free layers must save (``-inf`` without a latency budget); ``LatencyUnreachable`` if they
    cannot."""
    if latency is None:
        return -math.inf
    pinned_time = sum(o.time_saving for o in pinned.values())
    need = time_total * (1.0 - latency) - pinned_time
    best = (time_total - pinned_time - strategy.max_saving(free, _time_key)) / time_total
    if need > 0 and best > latency:
        raise LatencyUnreachable(
            f"latency {latency} is out of reach {where}: the model keeps at least {best:.4f} of its measured time "
            f"(every layer at its fastest rank; {fixed / time_total:.4f} of it is outside the eligible layers). "
            f"Ask for latency of at least {math.ceil(best * 1000) / 1000:.3f}.",
            reachable=best,
        )
    return need


def _allocate(
    strategy: Allocation,
    free: list[_Layer],
    needs: tuple[float, float, float],
    requests: tuple[float | None, float | None, float | None],
    totals: tuple[int, int | None, float | None],
    scheme: str,
) -> dict[str, _Option]:
    """The free layers' choices that save ``needs`` = (parameters, FLOPs, seconds) (``-inf``: no such budget):
    the strategy's, or dense when only explicit ranks were asked for."""
    need, need_flops, _ = needs
    rate, flops, latency = requests
    total, flops_total, _ = totals
    if rate is None and flops is None and latency is None:
        return {lay.name: lay.options[0] for lay in free}
    if latency is not None:
        choice = strategy.for_time(free, needs, totals)
        if choice is None:
            asked = ", ".join(f"{k} {v}" for k, v in (("rate", rate), ("flops", flops)) if v is not None)
            raise LatencyUnreachable(
                f"latency {latency} and {asked} together are out of reach with allocation={strategy.name!r} and "
                f"scheme={scheme!r} (each alone is reachable); relax one of them"
            )
        return choice
    if rate is None:
        return strategy.for_flops(free, need_flops, total, flops_total)
    if flops is None:
        return strategy.for_params(free, need)
    both = strategy.for_both(free, need, need_flops, total, flops_total)
    if both is None:
        raise RateUnreachable(
            f"rate {rate} and flops {flops} together are out of reach with allocation={strategy.name!r} and "
            f"scheme={scheme!r} (each alone is reachable); relax one of them"
        )
    return both


def _warn_coarse(
    choice: Mapping[str, _Option],
    rate: float | None,
    flops: float | None,
    totals: tuple[int, int | None],
    need_flops: float,
    allocation: str,
) -> int | None:
    """Warn when the rank steps kept the result far from the request; the FLOPs after (``None``: not counted)."""
    total, flops_total = totals
    saved = sum(o.saving for o in choice.values())
    if rate is not None and flops is None and abs(saved / total - rate) > _RATE_TOLERANCE:
        warnings.warn(
            f"achieved rate {saved / total:.4f} is more than {_RATE_TOLERANCE} away from the requested {rate} "
            f"(allocation={allocation!r}): the rank steps of this model's layers are coarse",
            stacklevel=4,
        )
    if flops_total is None:
        return None
    flops_after = flops_total - sum(o.flops_saving for o in choice.values())
    coarse = need_flops > 0 and flops - flops_after / flops_total > _RATE_TOLERANCE  # not the explicit ranks
    if rate is None and flops is not None and coarse:
        warnings.warn(
            f"achieved FLOPs fraction {flops_after / flops_total:.4f} is more than {_RATE_TOLERANCE} below the "
            f"budget {flops} (allocation={allocation!r}): the rank steps of this model's layers are coarse",
            stacklevel=4,
        )
    return flops_after


def _layer_plans(layers: list[_Layer], choice: Mapping[str, _Option]) -> dict[str, LayerPlan]:
    """The :class:`LayerPlan` of every eligible layer under ``choice``."""
    plans = {}
    for lay in layers:
        o = choice[lay.name]
        full = lay.decs[o.scheme or next(iter(lay.decs))].full_rank
        energy = lay.kept[o.scheme][o.rank - 1] if o.scheme else 1.0
        fb = lay.flops.dense if lay.flops is not None else None
        tb = lay.dense_time
        ta = None if tb is None else tb - o.time_saving
        plans[lay.name] = LayerPlan(
            lay.name, o.scheme, o.rank, full, energy, lay.dense, lay.dense - o.saving, fb, lay.flops_after(o), tb, ta
        )
    return plans


def _choose(
    layers: list[_Layer],
    ranks: Mapping[str, int],
    strategy: Allocation,
    scheme: str,
    requests: tuple[float | None, float | None, float | None],
    totals: tuple[int, int | None, float | None],
    skipped: int,
    multiple: int,
    where: str = "",
    fixed: float = 0.0,
) -> tuple[dict[str, _Option], float]:
    """Every layer's option under the budgets ``requests`` = (rate, flops, latency), with the free layers' ranks
    multiples of ``multiple``; and the FLOPs the free layers had to save."""
    rate, flops, latency = requests
    total, flops_total, time_total = totals
    by_name = {lay.name: lay for lay in layers}
    choice = {n: _pinned_option(by_name[n], r, scheme) for n, r in ranks.items()}
    free = [lay for lay in layers if lay.name not in ranks]
    for lay in free:
        lay.set_options(multiple)
    need_flops = _flops_need(flops, flops_total, choice, free, strategy, scheme, multiple, skipped)
    need = _params_need(rate, total, choice, free, strategy, scheme, skipped)
    need_time = _time_need(latency, time_total, choice, free, strategy, where, fixed)
    allocated = _allocate(strategy, free, (need, need_flops, need_time), requests, totals, scheme)
    if latency is not None and rate is None:  # no layer made slower for nothing
        allocated = _no_slower(allocated, need_flops)
    choice.update(allocated)
    return choice, need_flops


def _no_slower(choice: dict[str, _Option], need_flops: float) -> dict[str, _Option]:
    """``choice`` with every factorized layer that is not faster than its dense layer made dense again, as long as
    the FLOPs budget holds (this loses no energy and no time; the layers that save the least FLOPs go first)."""
    out = dict(choice)
    saved = sum(o.flops_saving for o in out.values())
    for name, o in sorted(choice.items(), key=lambda kv: (kv[1].flops_saving, kv[0])):
        if o.scheme is not None and o.time_saving <= 0 and saved - o.flops_saving >= need_flops:
            out[name] = _Option(0, 0.0, None, None)
            saved -= o.flops_saving
    return out


_LATENCY_MULTIPLES = (1, 8, 16)
"""The rank multiples a latency budget compares when ``rank_multiple`` is not given."""


def _choose_latency(
    model: nn.Module,
    layers: list[_Layer],
    ranks: Mapping[str, int],
    strategy: Allocation,
    scheme: str,
    requests: tuple[float | None, float | None, float | None],
    totals: tuple[int, int | None],
    skipped: int,
    rank_multiple: int | None,
    ex: ExampleInput,
    runtime: str,
    timing: Timing,
) -> tuple[dict[str, _Option], float, dict, LatencyTable]:
    """:func:`_choose` under a latency budget: measure the latency table, then for each rank multiple to compare
    keep the allocation with the most kept energy (least total loss; ties: the faster, then the larger multiple);
    the plan's latency details, and the table."""
    table = measure_table(model, {lay.name: lay.module for lay in layers}, ex, {lay.name: lay.top for lay in layers},
                          runtime, timing)  # fmt: skip
    for lay in layers:
        lay.dense_time, lay.time_of = table.layers[lay.name].dense, table.layers[lay.name].time
    full = (*totals, table.dense_total)
    candidates: dict[int, dict] = {}
    best, error = None, None
    for k in (rank_multiple,) if rank_multiple else _LATENCY_MULTIPLES:
        where = (
            f"on runtime {runtime!r} with allocation={strategy.name!r}, scheme={scheme!r} and rank_multiple={k} "
            f"({skipped} weight layers skipped or excluded)"
        )
        try:
            args = (strategy, scheme, requests, full, skipped, k, where, table.fixed)
            choice, need_flops = _choose(layers, ranks, *args)
        except RateUnreachable as e:
            candidates[k] = {"unreachable": str(e)}
            # the error to raise if no multiple reaches the budget: the one naming the smallest reachable fraction
            floor, known = getattr(e, "reachable", None), getattr(error, "reachable", None)
            if error is None or floor is not None and (known is None or floor < known):
                error = e
            continue
        loss = sum(o.loss for o in choice.values())
        fraction = table.plan_time(choice) / table.dense_total
        candidates[k] = {"loss": loss, "table_fraction": fraction}
        rank = (round(loss, 9), fraction, -k)  # equal energy (to 1e-9): the faster, then the coarser multiple
        if best is None or rank < best[0]:
            best = (rank, k, choice, need_flops)
    if best is None:
        raise error
    (_, fraction, _), k, choice, need_flops = best
    for lay in layers:
        lay.multiple = k
    details = {
        "requested": requests[2],
        "runtime": runtime,
        "table_fraction": fraction,
        "dense_seconds": table.dense_total,
        "fixed_seconds": table.fixed,
        "predicted_seconds": table.plan_time(choice),
        "rank_multiple": k,
        "rank_multiple_candidates": {str(m): c for m, c in candidates.items()},
        "table": table.provenance,
    }
    return choice, need_flops, details, table


def build_plan(
    model: nn.Module,
    rate: float | None,
    allocation: str,
    scheme: str,
    ranks: Mapping[str, int] | None,
    exclude: Entries,
    bn_aware: bool,
    rank_multiple: int | None,
    calibration: Calibration | None = None,
    flops: float | None = None,
    input_shape=None,
    example=None,
    latency: float | None = None,
    runtime: str = "eager",
    timing: Timing | None = None,
) -> tuple[Plan, list[_Layer], dict[str, _Option]]:
    """The :class:`Plan` of :func:`plan_compression` (same arguments), with the eligible layers and the options
    it chose among, which :func:`smoothcompress.compress` factorizes."""
    rate = requested_rate(rate, flops, ranks, latency)
    strategy = _check_args(rate, allocation, scheme, flops, rank_multiple)
    if calibration is not None and scheme in TENSOR_SCHEMES:
        raise ConfigError(
            f"scheme {scheme!r} does not take a calibration (whitened truncation is for the matrix schemes): pass "
            "calibration=None, or use scheme='channel' with the calibration"
        )
    if latency is not None and scheme in TENSOR_SCHEMES:
        raise ConfigError(
            f"scheme {scheme!r} has no latency table (it is measured for the matrix schemes): use scheme='channel' "
            "with latency=, or a FLOPs budget (flops=) with the tensor scheme"
        )
    if latency is not None:
        timing = _check_latency_args(latency, runtime, timing, input_shape, example)
    model = unwrap(model)
    ranks = dict(ranks or {})
    ex = _flops_example(model, input_shape, flops, example)
    layers, notes, bn_pairs, bn_note, flops_total = _analyse(
        model, scheme, exclude, bn_aware, strategy.log_loss, rank_multiple or 1, calibration, ex
    )
    _check_ranks(ranks, {lay.name: lay for lay in layers}, notes)
    total = count_params(model)
    requests = (rate, flops, latency)
    details = table = None
    if latency is None:
        multiple = rank_multiple or 1
        totals = (total, flops_total, None)
        choice, need_flops = _choose(layers, ranks, strategy, scheme, requests, totals, len(notes), multiple)
    else:
        timed = timed_input(model, input_shape, example)  # random values, in the model's memory format
        choice, need_flops, details, table = _choose_latency(
            model, layers, ranks, strategy, scheme, requests, (total, flops_total), len(notes), rank_multiple, timed,
            runtime, timing,
        )  # fmt: skip
    flops_after = _warn_coarse(choice, rate, flops, (total, flops_total), need_flops, allocation)
    saved = sum(o.saving for o in choice.values())
    shape = ex.shape if ex is not None else None
    plans = _layer_plans(layers, choice)
    plan = Plan(plans, notes, total, total - saved, bn_pairs, bn_note, flops_total, flops_after, shape, details, table)
    return plan, layers, choice


def plan_compression(
    model: nn.Module,
    rate: float | None = None,
    allocation: str = "global",
    scheme: str = "channel",
    *,
    ranks: Mapping[str, int] | None = None,
    exclude: Entries = (),
    bn_aware: bool = False,
    rank_multiple: int | None = None,
    calibration: Calibration | None = None,
    flops: float | None = None,
    input_shape: Sequence[int] | None = None,
    example: object = None,
    latency: float | None = None,
    runtime: str = "eager",
    timing: Timing | None = None,
) -> Plan:
    """Decide, without building anything, which layers :func:`smoothcompress.compress` factorizes, and how.

    Each eligible layer gets a scheme and a rank, or stays dense.

    Parameters
    ----------
    model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple, calibration, flops, input_shape
        As in :func:`smoothcompress.compress`.
    example, latency, runtime, timing
        As in :func:`smoothcompress.compress`; a latency budget measures the latency table (or reads its cache).

    Returns
    -------
    Plan
        Per-layer decisions, notes on skipped layers and the parameter totals (and FLOP totals when counted).
    """
    return build_plan(
        model,
        rate,
        allocation,
        scheme,
        ranks,
        exclude,
        bn_aware,
        rank_multiple,
        calibration,
        flops,
        input_shape,
        example,
        latency,
        runtime,
        timing,
    )[0]


def plan_ranks(
    model: nn.Module,
    rate: float | None = None,
    allocation: str = "global",
    scheme: str = "channel",
    **kwargs,
) -> dict[str, int]:
    """``{layer name: rank}`` of the layers :func:`smoothcompress.compress` would factorize (dense layers are left out).

    Parameters are those of :func:`plan_compression`.
    """
    return plan_compression(model, rate, allocation, scheme, **kwargs).ranks()

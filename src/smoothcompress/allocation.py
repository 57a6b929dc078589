"""Rank allocation: which eligible layers :func:`smoothcompress.compress` factorizes, with which scheme and rank.

Inputs: a model, a ``rate`` (fraction of ALL parameters to remove, BatchNorm and biases included, in ``[0, 1)``)
and/or explicit ``ranks``, an ``allocation`` and a ``scheme``. Output: a :class:`Plan` (:func:`plan_compression`)
with a :class:`LayerPlan` per eligible layer; nothing is built. Eligible layers are plain ``nn.Conv2d`` with
``groups == 1`` and ``nn.Linear``, minus ``exclude`` (see :mod:`smoothcompress.selection`); a layer is factorized
only when that saves parameters, ``r * (rows + cols) < rows * cols``.

Let ``kept_l(r) = sum_{i<=r} s_i**2 / sum_i s_i**2`` be the fraction of layer ``l``'s spectral energy kept at
rank ``r``. With a ``calibration`` (:func:`smoothcompress.calibrate`) the ``s_i`` are the singular values of
``W L`` (``L L^T`` the layer's input moment), so ``kept_l`` is the fraction of the layer's *output* energy on the
calibration inputs, and every allocation below shares ranks out by output error. Allocations (:data:`ALLOCATIONS`):

* ``"global"`` (default): all ranks chosen jointly to minimise ``sum_l -log kept_l(r_l)`` at the parameter
  budget, greedily along each layer's lower convex hull of (parameters saved, loss).
* ``"global-linear"``: the same greedy with loss ``sum_l (1 - kept_l)``.
* ``"uniform"``: the same fraction of the full rank in every layer.
* ``"energy"``: the same fraction of spectral energy in every layer.

Schemes (:data:`SCHEMES`): ``"channel"`` and ``"spatial"`` (see :mod:`smoothcompress.factorized`), or ``"auto"``:
per layer, whichever of the two loses less spectral energy at the same parameter cost.

The achieved rate is never below the request and overshoots it by at most about one rank step of one layer; a
rate the eligible layers cannot reach raises :class:`smoothcompress.accounting.RateUnreachable`.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from smoothcompress.accounting import RateUnreachable, bisect_boundary, check_rate, count_params
from smoothcompress.batchnorm import bn_scale, trace_bn_pairs
from smoothcompress.factorized import (
    Factorized,
    _check_rank,
    _decompose,
    _Decomposition,
    _effective_scheme,
    _row_weight,
    matricize,
)
from smoothcompress.selection import Entries, select_layers, unwrap

if TYPE_CHECKING:
    from smoothcompress.calibration import Calibration

__all__ = ["SCHEMES", "ALLOCATIONS", "LayerPlan", "Plan", "plan_compression", "plan_ranks"]

SCHEMES = ("channel", "spatial", "auto")
"""Factorization schemes accepted by :func:`smoothcompress.compress`."""

ALLOCATIONS = ("global", "global-linear", "uniform", "energy")
"""Rank allocation strategies accepted by :func:`smoothcompress.compress`."""

_RATE_TOLERANCE = 0.01


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


def _check_args(rate, allocation: str, scheme: str) -> None:
    if rate is not None:
        check_rate(rate)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; choose one of {', '.join(map(repr, ALLOCATIONS))}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(map(repr, SCHEMES))}")


def _is_weight_layer(name: str, module: nn.Module) -> bool:
    """A submodule (not the root) that owns a weight tensor of 2 or more dims: what a compression report lists."""
    w = getattr(module, "weight", None)
    return bool(name) and isinstance(w, torch.Tensor) and w.dim() >= 2


def _eligible(model: nn.Module, exclude: Entries) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Eligible layers by name, and a status note for every other weight layer."""
    inside_factorized = [name + "." for name, m in model.named_modules() if isinstance(m, Factorized)]

    def ineligible(name: str, m: nn.Module) -> str | None:
        if any(name.startswith(p) for p in inside_factorized):
            return "already factorized"
        if type(m) is nn.Conv2d and m.groups != 1:
            kind = "depthwise" if m.groups == m.in_channels else "grouped"
            return f"{kind} conv (groups={m.groups})"
        if type(m) in (nn.Conv2d, nn.Linear):
            return None
        return f"unsupported layer type {type(m).__name__}"

    sel = select_layers(model, exclude=exclude, types=_is_weight_layer, ineligible=ineligible)
    return sel.chosen, {name: f"skipped: {why}" for name, why in sel.skipped.items()}


def _analyse(
    model: nn.Module,
    scheme: str,
    exclude: Entries,
    bn_aware: bool,
    log_loss: bool,
    multiple: int,
    calibration: Calibration | None = None,
) -> tuple[list[_Layer], dict[str, str], dict[str, str], str | None]:
    modules, notes = _eligible(model, exclude)
    if calibration is not None:
        calibration.check(model, modules)
    bn_pairs, bn_note = trace_bn_pairs(model) if bn_aware and modules else ({}, None)
    bn_pairs = {k: v for k, v in bn_pairs.items() if k in modules}
    named = dict(model.named_modules())
    layers = []
    for name, m in modules.items():
        w = m.weight.detach()
        out_scale = bn_scale(named[bn_pairs[name]]) if name in bn_pairs else None
        wanted = ("channel", "spatial") if scheme == "auto" else (scheme,)
        decs, kept = {}, {}
        for s in dict.fromkeys(_effective_scheme(w.shape, s) for s in wanted):  # in order: channel first
            moment = calibration.moment(name, s) if calibration is not None else None
            decs[s] = _decompose(matricize(w, s), _row_weight(out_scale, w, s), moment)
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
    lo, hi = bisect_boundary(lambda x: sum(rule(lay, x).saving for lay in layers) >= need)
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
    exclude: Entries,
    bn_aware: bool,
    rank_multiple: int,
    calibration: Calibration | None = None,
) -> tuple[Plan, list[_Layer], dict[str, _Option]]:
    _check_args(rate, allocation, scheme)
    model = unwrap(model)
    if isinstance(rank_multiple, bool) or not isinstance(rank_multiple, int) or rank_multiple < 1:
        raise ValueError(f"rank_multiple must be a positive int (e.g. 8 or 16 for CPU speed), got {rank_multiple!r}")
    ranks = dict(ranks or {})
    if rate is None and not ranks:
        raise ValueError("pass a rate (fraction of parameters to remove) or explicit ranks per layer")
    log_loss = allocation != "global-linear"
    layers, notes, bn_pairs, bn_note = _analyse(
        model, scheme, exclude, bn_aware, log_loss, rank_multiple, calibration
    )
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
    exclude: Entries = (),
    bn_aware: bool = False,
    rank_multiple: int = 1,
    calibration: Calibration | None = None,
) -> Plan:
    """Decide, without building anything, which layers :func:`smoothcompress.compress` factorizes, and how.

    Each eligible layer gets a scheme and a rank, or stays dense.

    Parameters
    ----------
    model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple, calibration
        As in :func:`smoothcompress.compress`.

    Returns
    -------
    Plan
        Per-layer decisions, notes on skipped layers and the parameter totals.
    """
    return _plan(model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple, calibration)[0]


def plan_ranks(
    model: nn.Module,
    rate: float | None = 0.7,
    allocation: str = "global",
    scheme: str = "channel",
    **kwargs,
) -> dict[str, int]:
    """``{layer name: rank}`` of the layers :func:`smoothcompress.compress` would factorize (dense layers are left out).

    Parameters are those of :func:`plan_compression`.
    """
    return plan_compression(model, rate, allocation, scheme, **kwargs).ranks()

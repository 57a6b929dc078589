"""Low-rank SVD compression of a model, without fine-tuning: :func:`compress` and :func:`compress_report`.

:func:`compress` plans the ranks (:mod:`smoothcompress.allocation`), then replaces every layer the plan factorizes
by a :class:`FactorizedConv2d` or :class:`FactorizedLinear` (:mod:`smoothcompress.factorized`), or with a tensor
scheme a :class:`~smoothcompress.tensorfactor.CPConv2d` or :class:`~smoothcompress.tensorfactor.TuckerConv2d`
(:mod:`smoothcompress.tensorfactor`), at the same module
name, in a deep copy of the model. BatchNorm-aware truncation lives in :mod:`smoothcompress.batchnorm`, the layer
selection (``exclude``) in :mod:`smoothcompress.selection`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from smoothcompress.accounting import LayerTable, layer_report, measure_latency, timed_input
from smoothcompress.allocation import build_plan, requested_rate
from smoothcompress.factorized import (
    FactorizedConv2d,
    FactorizedLinear,
    truncated_factors,
)
from smoothcompress.inputs import as_example
from smoothcompress.latency import LatencyUnreachable, Timing, measure_models
from smoothcompress.layers import is_linear_like, layer_weight
from smoothcompress.record import COMPRESSION_ATTR, CompressionRecord, compression_record
from smoothcompress.selection import Entries, set_submodule, unwrap
from smoothcompress.tensorfactor import TENSOR_SCHEMES, TensorFit, tensor_factorized

if TYPE_CHECKING:
    from smoothcompress.calibration import Calibration

__all__ = ["compress", "compress_report", "LATENCY_ROUNDS", "LATENCY_CLOSE"]


def compress(
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
    inplace: bool = False,
    flops: float | None = None,
    input_shape: Sequence[int] | None = None,
    example: object = None,
    latency: float | None = None,
    runtime: str = "eager",
    timing: Timing | None = None,
) -> nn.Module:
    """A smaller copy of ``model`` with eligible Conv2d and Linear layers replaced by truncated-SVD factors.

    Eligible: plain ``nn.Conv2d`` with ``groups == 1``, ``nn.Linear`` and Linear-like modules such as
    ``transformers``' ``Conv1D`` (GPT-2), see :mod:`smoothcompress.layers`. Grouped and depthwise convs,
    ConvTranspose, unregistered subclasses, ``nn.MultiheadAttention``'s projections, layers whose weight is tied to
    another module's (a language model's head tied to its embedding) and any other weight layer are skipped and
    listed in the report. No fine-tuning.

    Parameters
    ----------
    model : nn.Module
        The model to compress; it is not modified unless ``inplace``. ``DataParallel``,
        ``DistributedDataParallel`` and ``torch.compile`` wrappers are looked through: the result is a copy of the
        wrapped model (with ``inplace``, the wrapped model itself).
    rate : float or None
        Fraction of ALL parameters to remove (BatchNorm and biases included), in [0, 1); 0.7 means 70% fewer
        parameters. The achieved rate is at least ``rate`` and overshoots it by about one rank step of one layer.
        ``None``: no parameter budget; only ``flops`` and the explicit ``ranks`` apply. When no budget is given at
        all (``rate`` and ``flops`` ``None``, no ``ranks``) the rate is 0.7
        (:data:`~smoothcompress.allocation.DEFAULT_RATE`): ``compress(model)`` removes 70% of the parameters,
        ``compress(model, flops=0.5)`` meets the FLOPs budget alone and ``compress(model, 0.7, flops=0.5)`` both.
    allocation : {"global", "global-linear", "uniform", "energy"}
        How ranks are chosen, see :mod:`smoothcompress.allocation`.
    scheme : {"channel", "spatial", "auto", "cp", "tucker"}
        The factorization, see :mod:`smoothcompress.factorized` (``"auto"``: per layer, whichever loses less).
        ``"cp"`` and ``"tucker"`` factorize every conv with a kernel larger than ``1 x 1`` as a tensor
        (:class:`~smoothcompress.tensorfactor.CPConv2d`, :class:`~smoothcompress.tensorfactor.TuckerConv2d`;
        :mod:`smoothcompress.tensorfactor`, the ``tensor`` extra) and the other layers with the channel scheme.
    ranks : mapping of str to int, optional
        Explicit ranks of some layers, by module name. These layers are pinned; the others are allocated to reach
        ``rate``. With ``scheme="auto"`` an explicit rank is a channel-scheme rank, and the spatial scheme is used
        instead where it loses less at the same or lower parameter cost. A rank that saves no parameters keeps
        the layer dense.
    exclude : str, nn.Module type, or iterable of them
        Layers to keep dense: dotted names, ``fnmatch`` patterns (``"layers.0.*"``), containers (``"layers.0"``:
        every layer inside), module types (``nn.Linear``) or ``"<first>"``/``"<last>"``, as defined in
        :mod:`smoothcompress.selection`. An entry that matches no weight layer raises ValueError.
    bn_aware : bool
        Truncate ``diag(g) W`` for layers followed by a BatchNorm with scale ``g`` (see :func:`bn_scale`) rather
        than ``W`` (see :mod:`smoothcompress.batchnorm`). Off by default.
    rank_multiple : int, optional
        Allocate only ranks that are multiples of this (explicit ``ranks`` are taken as given), e.g. 8 or 16, which
        CPU convolution kernels tend to run faster, at a coarser rate granularity. ``None`` (default): 1, or with a
        ``latency`` budget whichever of 1, 8 and 16 keeps the most spectral energy within the budget on the
        measured table (recorded in ``details["latency"]``).
    calibration : Calibration, optional
        Input moments of this model's layers from :func:`smoothcompress.calibrate` (training images, forward
        passes only). Each layer is then truncated in the metric of its inputs, ``min ||(W - W_r) X||_F``
        (whitened truncation), and ranks are allocated by output error instead of weight error. One calibration
        serves every rate. Without it, compression is data-free (the paper's method).
    flops : float, optional
        FLOPs budget: the fraction of the dense model's FLOPs (multiply-adds of one forward pass) to KEEP, in
        (0, 1]; 0.5 means at most half the FLOPs (``rate`` counts parameters REMOVED). The same allocation
        objective under a FLOPs constraint, or under both when ``rate`` is given too (see
        :mod:`smoothcompress.allocation`). The kept fraction is at most ``flops`` and undershoots it by about one
        rank step of one layer; ``flops=1.0`` returns an exact copy.
    input_shape : sequence of int, optional
        Example input shape with the batch dimension, e.g. ``(1, 3, 32, 32)``, on which FLOPs are counted (one
        forward pass). Needed with ``flops`` for models not built by :func:`smoothcompress.create_model` (registry
        models know theirs), unless ``example`` is given. When given, the record also holds the achieved FLOPs
        fraction.
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The input FLOPs are counted (and latency measured) on instead of a zero float input
        (:func:`smoothcompress.inputs.as_example`): int64 token ids (B, T) for a language model, a tuple of
        positional or a dict of keyword tensors, or ``f(model)`` (eager runtime only).
    latency : float, optional
        Latency budget: the fraction of the dense model's MEASURED time of one forward pass to keep, in (0, 1], on
        ``input_shape`` (or ``example``; required, batch included) in ``runtime`` on this machine. A latency table
        is measured (:mod:`smoothcompress.latency`: each layer alone, dense and factorized on a grid of ranks;
        cached on disk) and the same allocation objective is met under it, with ``rate`` and ``flops`` too when
        given (see :mod:`smoothcompress.allocation`). Each plan is built and timed end to end against the dense
        model, and up to :data:`LATENCY_ROUNDS` plans are made, each asking the table for its budget scaled by how
        far the last measurement fell; the result is the plan with the most kept energy measured within the budget
        (else the fastest, with a warning). The record holds the measured fraction, the speed-up and every round.
    runtime : {"eager", "onnxruntime"}
        Where latency is measured: PyTorch eager, or onnxruntime (the ``onnx`` extra) on the exported model.
    timing : Timing, optional
        How latency is measured (:class:`smoothcompress.latency.Timing`: threads, repetitions, the cache file, or
        a custom timer); default: torch's thread count, median of 5 after 1 warm-up, the user cache.
    inplace : bool
        Replace the layers in ``model`` itself, one by one, instead of in a deep copy: each dense weight is freed
        as soon as its factors replace it, so peak memory stays near the model's own size (see
        ``benchmarks/bench_scale.py``). The result is ``model``, equal to what the copy would have been. Every
        check runs before the first layer is replaced, so a refused call leaves ``model`` as it was.

    Returns
    -------
    nn.Module
        A deep copy of ``model`` (``model`` itself with ``inplace``) in which factorized layers are
        :class:`FactorizedConv2d` / :class:`FactorizedLinear` at the original module names. ``rate=0`` returns an
        exact copy. The result carries
        ``sc_compression`` (:data:`COMPRESSION_ATTR`): a :class:`~smoothcompress.record.CompressionRecord` with
        the request, the achieved rate and parameter counts, the requested and achieved FLOPs fraction (when
        FLOPs were counted), a status note for every skipped layer and, in ``details``, the ranks and BatchNorm
        pairs; :func:`compress_report` and :func:`smoothcompress.save` use it.

    Raises
    ------
    ValueError
        On a rate outside [0, 1), an unknown allocation or scheme, a rank below 1 or above full rank, an unknown
        layer name, an exclude entry that matches nothing, a rate that the eligible layers cannot reach (the
        message names the largest reachable rate), or a calibration made for another model; ``flops`` outside
        (0, 1] or without a known input shape; a FLOPs budget out of reach
        (:class:`~smoothcompress.accounting.RateUnreachable`, naming the smallest reachable fraction);
        ``latency`` outside (0, 1], without ``input_shape`` or ``example``, an unknown ``runtime``, or out of reach
        (:class:`~smoothcompress.latency.LatencyUnreachable`, naming the smallest reachable fraction).
    MissingExtra
        ``runtime="onnxruntime"`` without onnxruntime installed.
    """
    model = unwrap(model)
    rate = requested_rate(rate, flops, ranks, latency)
    settings = _Settings(rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple, calibration, flops,
                         input_shape, example, latency, runtime, timing)  # fmt: skip
    if latency is not None:
        return _within_latency(model, settings, inplace)
    plan, layers, choice = build_plan(model, **settings.arguments())  # called here: its warnings name the caller
    if plan.bn_note:
        warnings.warn(plan.bn_note, stacklevel=2)
    out = _factorize(model if inplace else copy.deepcopy(model), layers, choice)
    setattr(out, COMPRESSION_ATTR, settings.record(plan))
    return out


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The arguments of one :func:`compress` call (see there), after ``rate`` is resolved, named as
    :func:`~smoothcompress.allocation.build_plan` names them."""

    rate: float | None
    allocation: str
    scheme: str
    ranks: Mapping[str, int] | None
    exclude: Entries
    bn_aware: bool
    rank_multiple: int | None
    calibration: Calibration | None
    flops: float | None
    input_shape: Sequence[int] | None
    example: object
    latency: float | None
    runtime: str
    timing: Timing | None

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~smoothcompress.allocation.build_plan` after the model (the fields are
        named as its parameters)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def plan(self, model: nn.Module, table_budget: float):
        """:func:`~smoothcompress.allocation.build_plan` of these settings, with the latency table asked for
        ``table_budget`` instead of the requested latency."""
        return build_plan(model, **dataclasses.replace(self, latency=table_budget).arguments())

    def record(self, plan) -> CompressionRecord:
        """The record of a result built from ``plan`` (without the end-to-end latency measurement)."""
        scheme, calibration = self.scheme, self.calibration
        return CompressionRecord(
            # what was done: a tensor factorization, whitened truncation with a calibration, or the paper's SVD
            method=scheme if scheme in TENSOR_SCHEMES else "svd" if calibration is None else "svd-data",
            options={
                "allocation": self.allocation,
                "scheme": scheme,
                "bn_aware": bool(self.bn_aware),
                "rank_multiple": plan.latency["rank_multiple"] if plan.latency else self.rank_multiple or 1,
            },
            rate_requested=None if self.rate is None else float(self.rate),
            rate_achieved=plan.rate,
            params_before=plan.params_before,
            params_after=plan.params_after,
            flops_requested=None if self.flops is None else float(self.flops),
            flops_achieved=plan.flops_fraction,
            latency_requested=None if self.latency is None else float(self.latency),
            notes=dict(plan.notes),
            details={
                "ranks": {n: [p.scheme, p.rank] for n, p in plan.layers.items() if p.rank is not None},
                "bn_pairs": dict(plan.bn_pairs),
                "bn_note": plan.bn_note,
                **({"calibration": calibration.summary()} if calibration is not None else {}),
                **({"flops": plan.flops_details()} if plan.flops_before is not None else {}),
            },
        )


def _factorize(out: nn.Module, layers: list, choice: Mapping) -> nn.Module:
    """Replace in ``out`` every layer that ``choice`` factorizes (``layers`` and ``choice`` of ``build_plan``)."""
    for lay in layers:
        opt, decs, dense = choice[lay.name], lay.decs, lay.module
        lay.decs, lay.module = {}, None  # hold no layer's decomposition or dense weight longer than needed
        if opt.scheme is None:
            continue
        dec = decs.pop(opt.scheme)
        del decs
        if isinstance(dec, TensorFit):
            new = tensor_factorized(dense, dec, opt.rank)
        else:
            factors = truncated_factors(layer_weight(dense).detach(), dec, opt.rank, opt.scheme)
            if is_linear_like(dense):
                new = FactorizedLinear.from_factors(dense, factors)
            else:
                new = FactorizedConv2d.from_factors(dense, factors, opt.scheme)
            del factors
        new.train(dense.training)
        del dec, dense
        set_submodule(out, lay.name, new)
    return out


LATENCY_ROUNDS = 4
"""Plans timed end to end under a latency budget: the first on the latency table's prediction, each next one with
the table's budget scaled by how far the previous measurement fell from the request."""

LATENCY_CLOSE = 0.97
"""A measured fraction in ``[LATENCY_CLOSE * latency, latency]`` ends the rounds: met, and close to the request."""

MODEL_SECONDS = 1.0
"""Timed passes per whole-model measurement in the rounds: at least ``Timing.reps``, and enough for about this many
seconds of the dense model (a pass at batch 1 takes a millisecond, and five of them are mostly noise), at most
:data:`MAX_MODEL_REPS`."""

MAX_MODEL_REPS = 50


@dataclasses.dataclass
class _Trial:
    """One plan built and timed end to end, with the warnings its planning gave."""

    plan: object
    model: nn.Module
    dense_seconds: float
    seconds: float
    loss: float
    warned: list

    @property
    def fraction(self) -> float:
        return self.seconds / self.dense_seconds if self.dense_seconds > 0 else 1.0


def _within_latency(model: nn.Module, settings: _Settings, inplace: bool) -> nn.Module:
    """:func:`compress` under a latency budget, closed on end-to-end measurements.

    The per-layer table predicts the time of a plan; the whole model's measured time is what the budget asks for
    (layers timed alone miss what a runtime fuses or overlaps, and what caches do between layers). So each plan is
    built and timed against the dense model, in turns, and the next plan asks the table for its budget scaled by
    ``latency / measured`` (tighter after a miss, looser when far under), for at most :data:`LATENCY_ROUNDS`
    plans; the rounds stop early when a plan repeats or measures within ``[LATENCY_CLOSE * latency, latency]``.
    A budget below what the table can reach is asked at the table's smallest reachable fraction. The result is the
    plan with the most kept energy among those measured within the budget, else the fastest one measured; it is
    timed once more for the record (chosen on a measurement, that measurement would flatter it), with a warning
    when that misses the budget; ``LatencyUnreachable`` when none meets a budget that the table could not reach
    either. Only the chosen plan's planning warnings are shown.
    """
    latency, runtime, timing = settings.latency, settings.runtime, settings.timing
    table_budget, best, out_of_table, ex = latency, None, None, None
    asked, plans, rounds = set(), set(), []
    for _ in range(2 * LATENCY_ROUNDS):  # each round may first need one re-ask at the table's floor
        if len(rounds) == LATENCY_ROUNDS:
            break
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                plan, layers, choice = settings.plan(model, table_budget)
        except LatencyUnreachable as e:
            if table_budget == latency:
                out_of_table = e  # the request itself is beyond the table
            at_floor = e.reachable is not None and e.reachable > table_budget and round(e.reachable, 6) not in asked
            if not at_floor:  # out of reach for another reason, or already tried at the floor: stop
                if best is None:
                    raise (out_of_table or e) from None
                break
            asked.add(round(e.reachable, 6))
            table_budget = min(1.0, e.reachable * (1 + 1e-9))  # just above the floor: rounding must not undo it
            continue
        asked.add(round(table_budget, 6))
        signature = tuple((n, p.scheme, p.rank) for n, p in plan.layers.items())
        if signature in plans:  # the same plan again: timing it again would only measure noise
            break
        plans.add(signature)
        if ex is None:  # after the plan has checked the arguments
            ex = timed_input(model, settings.input_shape, settings.example)
            passes = math.ceil(MODEL_SECONDS / max(plan.latency["dense_seconds"], 1e-9))
            base = timing or Timing()
            timing = dataclasses.replace(base, reps=min(MAX_MODEL_REPS, max(base.reps, passes)))
        out = _factorize(copy.deepcopy(model), layers, choice)
        dense_seconds, seconds = measure_models([model, out], ex, runtime, timing)
        trial = _Trial(plan, out, dense_seconds, seconds, sum(o.loss for o in choice.values()), list(warned))
        rounds.append(
            {
                "table_budget": table_budget,
                "table_fraction": plan.latency["table_fraction"],
                "measured_fraction": trial.fraction,
                "loss": trial.loss,
            }  # fmt: skip
        )
        best = trial if best is None else _best([best, trial], latency)
        if LATENCY_CLOSE * latency <= trial.fraction <= latency:
            break
        table_budget = min(1.0, table_budget * latency / trial.fraction) if trial.fraction > 0 else 1.0
    if best is None:
        raise out_of_table or LatencyUnreachable(f"latency {latency}: no plan could be made on runtime {runtime!r}")
    if best.fraction > latency and out_of_table is not None:
        floor = "" if out_of_table.reachable is None else f"; the latency table's floor is {out_of_table.reachable:.4f}"
        raise LatencyUnreachable(
            f"latency {latency} is out of reach on runtime {runtime!r}: the fastest plan keeps {best.fraction:.4f} of "
            f"the dense model's time measured end to end{floor}. Ask for latency of at least "
            f"{math.ceil(best.fraction * 1000) / 1000:.3f}.",
            reachable=best.fraction,
        )
    # the chosen plan timed once more: picked for its measurement, the same measurement would be optimistic
    best.dense_seconds, best.seconds = measure_models([model, best.model], ex, runtime, timing)
    for w in best.warned:  # the chosen plan's planning warnings, as if compress had planned it alone
        warnings.warn(w.message, w.category, stacklevel=3)
    if best.plan.bn_note:
        warnings.warn(best.plan.bn_note, stacklevel=3)
    out = best.model
    if inplace:  # move the chosen factorized layers into the model itself
        for name, layer_plan in best.plan.layers.items():
            if layer_plan.rank is not None:
                set_submodule(model, name, out.get_submodule(name))
        out = model
    record = settings.record(best.plan)
    setattr(out, COMPRESSION_ATTR, _measured(record, best, rounds, runtime))
    return out


def _best(trials: Sequence[_Trial], latency: float) -> _Trial:
    """The trial with the least loss among those within ``latency``, else the fastest."""
    within = [t for t in trials if t.fraction <= latency]
    return min(within, key=lambda t: t.loss) if within else min(trials, key=lambda t: t.fraction)


def _measured(record: CompressionRecord, trial: _Trial, rounds: list[dict], runtime: str) -> CompressionRecord:
    """``record`` with the chosen plan's end-to-end measurement, every round's, and one warning when the measured
    fraction misses the budget."""
    planned, fraction = trial.plan.latency, trial.fraction
    requested = record.latency_requested
    met = fraction <= requested
    info = {
        **planned,
        "requested": requested,
        "table_budget": planned["requested"],
        "measured_dense_seconds": trial.dense_seconds,
        "measured_seconds": trial.seconds,
        "measured_fraction": fraction,
        "speedup": trial.dense_seconds / trial.seconds if trial.seconds > 0 else float("inf"),
        "met": met,
        "rounds": rounds,
    }
    table = planned["table"]
    info["summary"] = (
        f"latency budget {requested} ({runtime}, input {table['input']}, {table['threads']} threads): measured "
        f"{fraction:.3f} of the dense time ({info['speedup']:.2f}x faster; the table predicted "
        f"{planned['table_fraction']:.3f} at its budget {planned['requested']:.3f}; {len(rounds)} plan(s) timed), "
        f"{'met' if met else 'MISSED'}; rank multiple {planned['rank_multiple']}"
    )
    if not met:
        warnings.warn(
            f"the measured latency fraction {fraction:.3f} misses the latency budget {requested} ({runtime}; "
            f"{len(rounds)} plan(s) timed end to end): time on a quieter machine, or ask for a smaller latency",
            stacklevel=4,
        )
    return dataclasses.replace(record, latency_achieved=fraction, details={**record.details, "latency": info})


def compress_report(
    model: nn.Module,
    compressed: nn.Module,
    input_shape: Iterable[int] | None = None,
    *,
    example: object = None,
    latency: bool = False,
    reps: int = 20,
) -> LayerTable:
    """Per-layer report of a compression: name, shape, status, rank, params and FLOPs before/after, kept energy.

    The totals give parameters, FLOPs (dense vs compressed, and their ratio) and, with ``latency=True``, the
    measured time of one forward pass of each model on ``input_shape``.

    Parameters
    ----------
    model : nn.Module
        The original model.
    compressed : nn.Module
        ``compress(model, ...)``, or the same model after :func:`smoothcompress.load`; the skip notes and the
        request are read from its ``sc_compression`` attribute when present.
    input_shape : tuple of int, optional
        Full input shape with the batch dimension, e.g. ``(1, 3, 32, 32)``, for FLOP counts and latency; ``None``
        skips FLOPs (unless ``example`` is given).
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The input to count FLOPs and time latency on instead (:func:`smoothcompress.inputs.as_example`), e.g. int64
        token ids (B, T) for a language model, or ``{"input_ids": ..., "attention_mask": ...}``.
    latency : bool
        Also time both models (:func:`smoothcompress.accounting.measure_latency`: eval mode, no gradient, 3
        warm-up passes, then ``reps`` passes taken in turns, median) on an input of ``input_shape``; each model
        runs on its own device and memory format. The totals then show both times and the speed-up.
    reps : int
        Timed forward passes per model when ``latency`` is set.

    Returns
    -------
    LayerTable
        ``str(report)`` is the table with totals; ``report.to_dict()`` is JSON-ready data; ``report.extra`` holds
        the ``sc_compression`` record as a dict (:meth:`~smoothcompress.record.CompressionRecord.to_dict`).
    """
    if latency and input_shape is None and example is None:
        raise ValueError("latency=True needs an input_shape to time, e.g. (128, 3, 32, 32), or an example")
    record = compression_record(compressed)
    label = record.label if record else ""  # the registered method that ran, e.g. "svd+bn-global-channel"
    notes = record.notes if record else None
    rep = layer_report(model, compressed, input_shape, notes=notes, method=label, example=example)
    rep.extra = record.to_dict() if record else {}
    if latency:
        timed = [model, compressed]
        rep.latency_before, rep.latency_after = measure_latency(timed, input_shape, reps=reps, example=example)
        rep.latency_shape = as_example(model, example, input_shape).shape
    return rep

"""Low-rank SVD compression of a model, without fine-tuning: :func:`compress` and :func:`compress_report`.

:func:`compress` plans the ranks (:mod:`smoothcompress.allocation`), then replaces every layer the plan factorizes
by a :class:`FactorizedConv2d` or :class:`FactorizedLinear` (:mod:`smoothcompress.factorized`) at the same module
name, in a deep copy of the model. BatchNorm-aware truncation lives in :mod:`smoothcompress.batchnorm`, the layer
selection (``exclude``) in :mod:`smoothcompress.selection`.

The names that moved out of this module are re-exported here, so ``from smoothcompress.lowrank import
FactorizedConv2d`` (and the like) keeps working.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from torch import nn

from smoothcompress.accounting import LayerTable, layer_report
from smoothcompress.allocation import ALLOCATIONS, SCHEMES, LayerPlan, Plan, _plan, plan_compression, plan_ranks
from smoothcompress.batchnorm import bn_scale, find_bn_pairs
from smoothcompress.factorized import (
    Factorized,
    FactorizedConv2d,
    FactorizedLinear,
    Factors,
    _factors,
    factorize_weight,
    matricize,
    spectrum,
)
from smoothcompress.methods import COMPRESSION_ATTR, CompressionRecord, compression_record
from smoothcompress.selection import Entries, set_submodule, unwrap

if TYPE_CHECKING:
    from smoothcompress.calibration import Calibration

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


def compress(
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
) -> nn.Module:
    """A smaller copy of ``model`` with eligible Conv2d and Linear layers replaced by truncated-SVD factors.

    Eligible: plain ``nn.Conv2d`` with ``groups == 1`` and ``nn.Linear``. Grouped and depthwise convs,
    ConvTranspose, subclasses and any other weight layer are skipped and listed in the report. No fine-tuning.

    Parameters
    ----------
    model : nn.Module
        The model to compress; it is not modified. ``DataParallel``, ``DistributedDataParallel`` and
        ``torch.compile`` wrappers are looked through: the result is a copy of the wrapped model.
    rate : float or None
        Fraction of ALL parameters to remove (BatchNorm and biases included), in [0, 1); 0.7 means 70% fewer
        parameters. The achieved rate is at least ``rate`` and overshoots it by about one rank step of one layer.
        ``None``: apply only the explicit ``ranks``.
    allocation : {"global", "global-linear", "uniform", "energy"}
        How ranks are chosen, see :mod:`smoothcompress.allocation`.
    scheme : {"channel", "spatial", "auto"}
        The factorization, see :mod:`smoothcompress.factorized` (``"auto"``: per layer, whichever loses less).
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
    rank_multiple : int
        Allocate only ranks that are multiples of this (explicit ``ranks`` are taken as given), e.g. 8 or 16, which
        CPU convolution kernels tend to run faster, at a coarser rate granularity.
    calibration : Calibration, optional
        Input moments of this model's layers from :func:`smoothcompress.calibrate` (training images, forward
        passes only). Each layer is then truncated in the metric of its inputs, ``min ||(W - W_r) X||_F``
        (whitened truncation), and ranks are allocated by output error instead of weight error. One calibration
        serves every rate. Without it, compression is data-free (the paper's method).

    Returns
    -------
    nn.Module
        A deep copy of ``model`` in which factorized layers are :class:`FactorizedConv2d` /
        :class:`FactorizedLinear` at the original module names. ``rate=0`` returns an exact copy. The copy carries
        ``sc_compression`` (:data:`COMPRESSION_ATTR`): a :class:`~smoothcompress.methods.CompressionRecord` with
        the request, the achieved rate and parameter counts, a status note for every skipped layer and, in
        ``details``, the ranks and BatchNorm pairs; :func:`compress_report` and :func:`smoothcompress.save` use it.

    Raises
    ------
    ValueError
        On a rate outside [0, 1), an unknown allocation or scheme, a rank below 1 or above full rank, an unknown
        layer name, an exclude entry that matches nothing, a rate that the eligible layers cannot reach (the
        message names the largest reachable rate), or a calibration made for another model.
    """
    model = unwrap(model)
    plan, layers, choice = _plan(
        model, rate, allocation, scheme, ranks, exclude, bn_aware, rank_multiple, calibration
    )
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
        set_submodule(out, lay.name, new)
    if plan.bn_note:
        warnings.warn(plan.bn_note, stacklevel=2)
    record = CompressionRecord(
        method="svd",
        options={
            "allocation": allocation,
            "scheme": scheme,
            "bn_aware": bool(bn_aware),
            "rank_multiple": rank_multiple,
        },
        rate_requested=None if rate is None else float(rate),
        rate_achieved=plan.rate,
        params_before=plan.params_before,
        params_after=plan.params_after,
        notes=dict(plan.notes),
        details={
            "ranks": {n: [p.scheme, p.rank] for n, p in plan.layers.items() if p.rank is not None},
            "bn_pairs": dict(plan.bn_pairs),
            "bn_note": plan.bn_note,
            **({"calibration": calibration.summary()} if calibration is not None else {}),
        },
    )
    setattr(out, COMPRESSION_ATTR, record)
    return out


def compress_report(model: nn.Module, compressed: nn.Module, input_shape: Iterable[int] | None = None) -> LayerTable:
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
    LayerTable
        ``str(report)`` is the table with totals; ``report.to_dict()`` is JSON-ready data; ``report.extra`` holds
        the ``sc_compression`` record as a dict (:meth:`~smoothcompress.methods.CompressionRecord.to_dict`).
    """
    record = compression_record(compressed)
    options = record.options if record else {}
    label = f"svd allocation={options.get('allocation')} scheme={options.get('scheme')}" if record else ""
    rep = layer_report(model, compressed, input_shape, notes=record.notes if record else None, method=label)
    rep.extra = record.to_dict() if record else {}
    return rep

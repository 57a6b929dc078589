"""Pruning baselines on the same footing as SVD compression: one call, the same ``rate``, the same report.

Three methods, all without fine-tuning:

``"magnitude"``
    Global unstructured magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with L1 importance) of
    every Conv, Linear and Linear-like weight (:mod:`smoothcompress.layers`, e.g. GPT-2's ``Conv1D``): the
    entries of smallest ``|w|`` across the whole network are set to zero. The pruning is made permanent with
    ``torch.nn.utils.prune.remove``: no masks, no hooks, plain dense tensors with zeros. The model keeps its
    shape; its size is the number of **non-zero** parameters. The weight layers are those
    :func:`smoothcompress.compress` sees (:func:`smoothcompress.layers.is_weight_layer`); left alone, and named
    with the reason in the record's ``notes``, are embedding tables and other layer types, and layers whose
    weight another module also owns (:func:`smoothcompress.layers.tied_weights`: GPT-2's ``lm_head``, tied to the
    embedding ``transformer.wte``, which zeroing it would prune too).
``"magnitude-layerwise"``
    The same, with the same fraction ``s`` of entries zeroed in each of those weights
    (``torch.nn.utils.prune.l1_unstructured`` per layer).
``"filter"``
    Structured L1-norm filter pruning (Li et al., ICLR 2017) that physically removes channels. Torch-Pruning's
    ``DependencyGraph`` groups the layers whose channels must be removed together (a conv, its BatchNorm, the
    next layers' input channels, and every layer tied to it by a residual addition), so the network stays
    consistent. A channel's importance is the L1 norm of its weights averaged over its group
    (``tp.importance.MagnitudeImportance(p=1)``). Every group keeps the same fraction of its channels (at least
    one), and the fraction is found by bisection so that the parameter count lands on the request. A group whose
    channels pass through ``nn.GroupNorm`` layers keeps a multiple of their ``num_groups`` (the least common
    multiple when several), at least one channel per norm group, and every norm group drops the same number of its
    own least important channels: the norm groups keep their members and ``num_groups`` still divides the
    channels. The
    classifier (the last Conv/Linear run by the forward pass) keeps its outputs. Depthwise convs are pruned
    together with the channels they carry; other grouped convs, whose channels would have to shrink group by
    group, are left alone along with the channels tied to them.

``rate`` means what it means in :func:`smoothcompress.compress`: the fraction of **all** parameters removed,
BatchNorm and biases included. The magnitude methods hit it to the parameter (up to per-layer rounding for
``"magnitude-layerwise"``), filter pruning to channel granularity (to ``num_groups`` channels in a group
through a GroupNorm): within 2 points unless one such step of the widest group holds more than about 4% of the
parameters, which happens only in toy-sized models.

Example
-------
>>> import smoothcompress as sc
>>> model = sc.create_model("resnet20", width=8)
>>> small = sc.prune(model, 0.5, method="filter")
>>> print(sc.prune_report(model, small, "filter", input_shape=(1, 3, 32, 32)))  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from smoothcompress.extras import require

if TYPE_CHECKING:
    import torch_pruning as tp

from smoothcompress.accounting import (
    RESHAPED,
    LayerTable,
    RateUnreachable,
    bisect_boundary,
    check_rate,
    count_params,
    layer_report,
    reshaped_modules,
)
from smoothcompress.errors import ConfigError, first_line
from smoothcompress.inputs import ExampleInput, as_example, first_tensor
from smoothcompress.layers import is_linear, is_weight_layer, layer_weight, linear_spec, tied_weights
from smoothcompress.record import COMPRESSION_ATTR, compression_record, make_record
from smoothcompress.selection import Entries, select_layers, unwrap

__all__ = ["PRUNE_METHODS", "prune", "prune_report", "max_prune_rate"]

PRUNE_METHODS = ("magnitude", "magnitude-layerwise", "filter")
"""Names accepted by ``method``."""


# ---------------------------------------------------------------------------------------------------------
# Public API


def prune(
    model: nn.Module,
    rate: float,
    method: str = "magnitude",
    exclude: Entries = (),
    input_shape: Sequence[int] | None = None,
    *,
    example: object = None,
) -> nn.Module:
    """Prune ``model`` so that a fraction ``rate`` of all its parameters is removed; the input is not modified.

    Parameters
    ----------
    model : nn.Module
        A trained model. It is deep-copied (registry metadata such as ``sc_arch`` travels with the copy).
        ``DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers are looked through.
    rate : float
        Fraction of all parameters (weights, biases, BatchNorm affine) to remove, in ``[0, 1)``. For the
        magnitude methods the count after pruning is the number of non-zero entries, so zeros already in the
        weights count as pruned (a model already that sparse is returned unchanged). ``0`` returns an exact copy.
    method : {"magnitude", "magnitude-layerwise", "filter"}
        See the module docstring.
    exclude : str, type, or iterable of them
        Layers to leave untouched: dotted names, ``fnmatch`` patterns (``"layers.0.*"``), containers
        (``"layers.0"``: every layer inside), module classes (``nn.Linear``) or ``"<first>"``/``"<last>"``, as
        defined in :mod:`smoothcompress.selection`. For ``"filter"`` an excluded layer keeps its output channels
        (its input channels still follow the layer before it). Each entry must match at least one layer: a
        Conv/Linear layer for ``"filter"``, a weight layer (:func:`smoothcompress.layers.is_weight_layer`) for the
        magnitude methods.
    input_shape : sequence of int, optional
        Shape of an example input, batch included, e.g. ``(1, 3, 32, 32)``; ``"filter"`` traces the network with
        it. Defaults to the registry shape of a model built by :func:`smoothcompress.create_model`.
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The example input instead (:func:`smoothcompress.inputs.as_example`), e.g. int64 token ids (B, T) or
        ``{"input_ids": ..., "attention_mask": ...}``; Torch-Pruning's ``DependencyGraph`` gets it as its
        ``example_inputs`` (a tensor, a tuple of positional or a dict of keyword tensors), a callable as its
        ``forward_fn``.

    Returns
    -------
    nn.Module
        The pruned copy, in the same train/eval mode as ``model``. Magnitude methods keep every shape and
        zero entries; ``"filter"`` returns narrower Conv2d / BatchNorm / Linear layers. The copy carries a
        :class:`~smoothcompress.record.CompressionRecord` as ``sc_compression``, which
        :func:`smoothcompress.save` writes; for the magnitude methods its ``notes`` name every weight layer left
        alone and why (``{"lm_head": "skipped: weight tied to transformer.wte (...)"}``); for ``"filter"`` its
        ``details["reshaped"]`` lists the modules whose tensors changed shape
        (:data:`smoothcompress.accounting.RESHAPED`).

    Raises
    ------
    ValueError
        An unknown method, a rate outside ``[0, 1)``, a rate the prunable layers cannot reach (the message names
        the largest reachable rate), an ``exclude`` entry that matches nothing, or a missing ``input_shape``.
    """
    _check_model(model)
    model = unwrap(model)
    method = _check_method(method)
    rate = check_rate(rate)
    # torch.nn.utils.prune views weights as flat vectors: pack channels_last weights (same values) first
    out = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    if rate == 0.0:
        return _recorded(model, out, method, rate)
    if method == "filter":
        layers = _prunable_layers(out, exclude)
        pruned = _prune_filters(out, rate, layers, _filter_example(model, example, input_shape))
        return _recorded(model, pruned, method, rate, details={RESHAPED: reshaped_modules(model, pruned)})
    layers, notes = _magnitude_layers(out, exclude)
    if method == "magnitude":
        _prune_magnitude_global(out, rate, layers)
    else:
        _prune_magnitude_layerwise(out, rate, layers)
    return _recorded(model, out, method, rate, notes)


def _recorded(
    model: nn.Module,
    pruned: nn.Module,
    method: str,
    rate: float,
    notes: dict[str, str] | None = None,
    details: dict | None = None,
) -> nn.Module:
    """``pruned`` with its :class:`~smoothcompress.record.CompressionRecord` set as ``sc_compression``."""
    nonzero = method != "filter"  # the magnitude methods leave shapes alone: their size is the non-zero count
    setattr(pruned, COMPRESSION_ATTR, make_record(method, model, pruned, rate, notes, details, nonzero=nonzero))
    return pruned


def prune_report(
    before: nn.Module,
    after: nn.Module,
    method: str,
    input_shape: Sequence[int] | None = None,
    *,
    example: object = None,
) -> LayerTable:
    """Per-layer table of a pruning, the same report as ``compress`` gives (:func:`smoothcompress.layer_report`).

    Parameters
    ----------
    before, after : nn.Module
        The original model and the result of :func:`prune`.
    method : str
        The method that produced ``after``; for the magnitude methods the report counts non-zero parameters
        (and says so in its totals line).
    input_shape : sequence of int, optional
        Example input shape, batch included, for FLOP counts; ``None`` skips FLOPs. Note that FLOPs of a
        magnitude-pruned model are dense FLOPs: zeros are still multiplied.
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The input to count FLOPs on instead (:func:`smoothcompress.inputs.as_example`).
    """
    method = _check_method(method)
    nonzero = method != "filter"
    record = compression_record(after)
    label = record.label if record else method  # the registered method that ran, e.g. "magnitude+bn"
    return layer_report(before, after, input_shape=input_shape, nonzero=nonzero, method=label, example=example)


def max_prune_rate(
    model: nn.Module,
    method: str = "magnitude",
    exclude: Entries = (),
    input_shape: Sequence[int] | None = None,
    *,
    example: object = None,
) -> float:
    """Largest ``rate`` that :func:`prune` can reach on ``model`` with these settings.

    For the magnitude methods it is the rate at which every prunable weight is zero; for ``"filter"`` the rate
    at which every prunable channel group is down to one channel. Arguments as in :func:`prune`.
    """
    _check_model(model)
    model = unwrap(model)
    method = _check_method(method)
    work = copy.deepcopy(model)
    total = count_params(work)
    if method == "filter":
        layers = _prunable_layers(work, exclude)
        plan = _filter_plan(work, layers, _filter_example(model, example, input_shape))
        return 1.0 - plan.params(0) / total if total else 0.0
    layers, _ = _magnitude_layers(work, exclude)
    floor = count_params(work, nonzero=True) - sum(_nonzero(layer_weight(m)) for m in layers.values())
    return 1.0 - floor / total if total else 0.0


# ---------------------------------------------------------------------------------------------------------
# Argument checks


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_method(method) -> str:
    if method not in PRUNE_METHODS:
        raise ConfigError(f"unknown pruning method {method!r}; choose one of {', '.join(map(repr, PRUNE_METHODS))}")
    return method


def _unreachable(rate: float, reachable: float, method: str, what: str) -> RateUnreachable:
    return RateUnreachable(
        f"rate {rate:.4f} is out of reach for method {method!r}: the largest reachable rate is {reachable:.4f} "
        f"({what}). Ask for a smaller rate, or exclude fewer layers."
    )


def _prunable_layers(model: nn.Module, exclude: Entries) -> dict[str, nn.Module]:
    """Conv and Linear layers of ``model`` by name, minus those matched by ``exclude``: the filter pruning roots."""
    return select_layers(model, exclude=exclude, types=_ROOTS).chosen


def _magnitude_layers(model: nn.Module, exclude: Entries) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The weight layers the magnitude methods zero, by name, and a note on every other weight layer.

    Chosen: Conv, ``nn.Linear`` and Linear-like layers whose weight no other module path owns, minus ``exclude``.
    Notes: ``{name: "skipped: <why>"}`` for the other weight layers (:func:`~smoothcompress.layers.is_weight_layer`).
    """
    tied = tied_weights(model)

    def ineligible(name: str, m: nn.Module) -> str | None:
        if not (isinstance(m, nn.modules.conv._ConvNd) or is_linear(m)):
            if isinstance(m, nn.Embedding):
                return "embedding table (magnitude pruning zeroes Conv, Linear and Linear-like weights)"
            return f"unsupported layer type {type(m).__name__}"
        if name in tied:
            return f"weight tied to {tied[name][0]} (zeroing it would prune that module too)"
        return None

    sel = select_layers(model, exclude=exclude, types=is_weight_layer, ineligible=ineligible)
    return sel.chosen, {name: f"skipped: {why}" for name, why in sel.skipped.items()}


def _weight_name(m: nn.Module) -> str:
    """Name of the weight parameter of a Conv, Linear or Linear-like layer."""
    spec = linear_spec(m)
    return spec.weight if spec is not None else "weight"


def _filter_example(model: nn.Module, example: object, input_shape: Sequence[int] | None) -> ExampleInput:
    """What filter pruning traces the network on (:func:`smoothcompress.inputs.as_example`), in one line if unknown."""
    try:
        return as_example(model, example, input_shape)
    except ConfigError as e:
        raise ConfigError(f"filter pruning traces the network and needs an example input: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# Unstructured magnitude pruning (torch.nn.utils.prune, made permanent)


def _nonzero(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t.detach()))


def _zeros_to_add(model: nn.Module, rate: float, layers: dict[str, nn.Module], method: str) -> int:
    """How many more entries of the prunable weights must become zero to reach ``rate`` (non-zeros counted)."""
    total = count_params(model)
    target = round((1.0 - rate) * total)  # non-zeros to keep
    nonzero = count_params(model, nonzero=True)
    prunable = sum(_nonzero(layer_weight(m)) for m in layers.values())
    if nonzero - prunable > target:
        reachable = 1.0 - (nonzero - prunable) / total
        raise _unreachable(rate, reachable, method, "every prunable Conv/Linear/Linear-like weight set to zero")
    return max(0, nonzero - target)


@contextlib.contextmanager
def _permanent(layers: Iterable[nn.Module]):
    """Context for ``torch.nn.utils.prune`` calls: on exit, ``prune.remove`` every mask and reparametrization
    hook, and put the parameters back in their original order (so ``state_dict`` keys keep their order)."""
    layers = list(layers)
    orders = [list(m._parameters) for m in layers]
    yield
    for m, order in zip(layers, orders, strict=True):
        if torch_prune.is_pruned(m):
            torch_prune.remove(m, _weight_name(m))
            m._parameters = {n: m._parameters[n] for n in order}


def _prune_magnitude_global(model: nn.Module, rate: float, layers: dict[str, nn.Module]) -> None:
    """Zero the globally smallest ``|w|`` of all prunable weights, in place, leaving no mask behind."""
    extra = _zeros_to_add(model, rate, layers, "magnitude")
    if extra == 0:
        return
    # Existing zeros are the smallest magnitudes, so they are picked first; ask for them plus ``extra``.
    zeros = sum(layer_weight(m).numel() - _nonzero(layer_weight(m)) for m in layers.values())
    with _permanent(layers.values()):
        torch_prune.global_unstructured(
            [(m, _weight_name(m)) for m in layers.values()],
            pruning_method=torch_prune.L1Unstructured,
            amount=zeros + extra,
        )


def _prune_magnitude_layerwise(model: nn.Module, rate: float, layers: dict[str, nn.Module]) -> None:
    """Zero the same fraction ``s`` of entries in every prunable weight, ``s`` chosen to hit ``rate``."""
    extra = _zeros_to_add(model, rate, layers, "magnitude-layerwise")
    if extra == 0:
        return
    sizes = [(layer_weight(m).numel(), _nonzero(layer_weight(m))) for m in layers.values()]
    before = sum(nz for _, nz in sizes)

    def removed(s: float) -> int:  # non-zeros removed when a fraction s of every layer's entries is zeroed
        return before - sum(min(nz, n - round(s * n)) for n, nz in sizes)

    lo, hi = bisect_boundary(lambda s: removed(s) < extra)  # removed(lo) < extra <= removed(hi)
    s = min((lo, hi), key=lambda v: abs(removed(v) - extra))
    with _permanent(layers.values()):
        for m, (n, _) in zip(layers.values(), sizes, strict=True):
            if round(s * n):
                torch_prune.l1_unstructured(m, _weight_name(m), amount=round(s * n))


# ---------------------------------------------------------------------------------------------------------
# Structured filter pruning (Torch-Pruning dependency graph)


# Torch-Pruning's roots: the module types it has channel pruners for (its ``ConvPruner`` and ``LinearPruner``,
# chosen by ``isinstance``). A Linear-like layer of another class (``transformers``' ``Conv1D``) has none, so filter
# pruning keeps its channels; the magnitude methods zero every ``layers.is_linear`` layer.
_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


class _FilterPlan:
    """The channel groups of a model, their channels by importance, and the order in which channels come back.

    Entry ``(g, j)`` of :attr:`order` means "group ``g`` keeps ``j`` channels"; entries are sorted by ``j / n_g``
    (ties by group). Prefix ``t`` of the order is the plan in which every group keeps one channel plus its entries
    among the first ``t``: a uniform keep-fraction rounded down, never below one channel. ``t = 0`` is the
    smallest model, ``t = len(order)`` the unpruned one, and consecutive prefixes differ by one channel of one
    group, so the parameter count grows with ``t`` in steps of one channel.

    Groups whose channels pass through ``nn.GroupNorm`` layers move in *units* of ``u`` channels (``u`` the least
    common multiple of their ``num_groups``, 1 without GroupNorm): the channels split into ``u`` consecutive blocks,
    one unit is the least important remaining channel of each block, and an entry ``(g, j)`` then means "group
    ``g`` keeps ``j`` units". Channel counts in :meth:`keep` are ``u`` times the units.

    The parameter count of a prefix is predicted without pruning: while planning, each group gives up one channel
    on a scratch copy, which shows by how much every parameter dimension shrinks per channel of that group.
    :meth:`build` prunes for real.

    Parameters
    ----------
    model : nn.Module
        Reference model; never modified.
    layers : dict of str to nn.Module
        The prunable Conv/Linear layers of ``model``; all others keep their output channels.
    example : ExampleInput
        Example input, batch first, used to trace the graph.
    """

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module], example: ExampleInput):
        self.model, self.example = model, example
        classifier, self.out_shape = _classifier(model, example)
        self.ignored = {n for n, m in model.named_modules() if isinstance(m, _ROOTS)} - (set(layers) - {classifier})
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        scratch = copy.deepcopy(model)
        with _traceable(scratch):
            dg, groups = self._groups(scratch)
            importance = require("torch_pruning", "prune").importance.MagnitudeImportance(
                p=1, normalizer=None, group_reduction="mean"
            )
            self.unit = {root: _norm_groups(g) for root, g in groups.items()}
            # Channels of each group, least important first, one unit after the other.
            self.ranking = {root: _unit_ranking(importance(g).cpu(), self.unit[root]) for root, g in groups.items()}
            self.sizes = {root: len(r) for root, r in self.ranking.items()}
            self.shrink = self._shrink_per_channel(scratch, dg, groups)
        units = {root: n // self.unit[root] for root, n in self.sizes.items()}
        self.order = sorted((j / n, i, root) for i, (root, n) in enumerate(units.items()) for j in range(2, n + 1))
        self.exact = False  # count parameters by pruning copies instead of predicting them
        self._measured: dict[int, int] = {}

    def _groups(self, model: nn.Module) -> tuple[tp.DependencyGraph, dict[str, tp.dependency.Group]]:
        """Dependency graph of ``model`` and its prunable channel groups by root-layer name."""
        dg = (
            require("torch_pruning", "prune")
            .DependencyGraph()
            .build_dependency(model, verbose=False, **_traced_call(self.example))
        )
        named = dict(model.named_modules())
        groups = {}
        for group in dg.get_all_groups(ignored_layers=[named[n] for n in self.ignored], root_module_types=_ROOTS):
            if any(_is_grouped_conv(dep.target.module) for dep, _ in group):
                continue  # the channels of a grouped conv must shrink group by group: left alone (documented)
            groups[dg._module2name[group[0].dep.target.module]] = group
        return dg, groups

    def _shrink_per_channel(self, scratch: nn.Module, dg, groups) -> dict[tuple[str, int], tuple[str, int]]:
        """(parameter name, dim) -> (group, size lost per channel removed), by removing one channel per group."""
        shrink, shapes = {}, dict(self.shapes)
        for root, group in groups.items():
            if self.sizes[root] < 2:
                continue
            root_idx = [int(self.ranking[root][0])]
            dg.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, root_idx).prune()
            for name, p in scratch.named_parameters():
                for d, (a, b) in enumerate(zip(shapes[name], p.shape, strict=True)):
                    if a != b:
                        shrink[(name, d)] = (root, a - b)
                shapes[name] = tuple(p.shape)
        return shrink

    def keep(self, t: int) -> dict[str, int]:
        """Channels kept per group at prefix ``t``."""
        kept = dict(self.unit)
        for _, _, root in self.order[:t]:
            kept[root] += self.unit[root]
        return kept

    def predicted(self, t: int) -> int:
        """Parameter count at prefix ``t``, predicted from the per-channel shrinkage."""
        kept, total = self.keep(t), 0
        for name, shape in self.shapes.items():
            size = 1
            for d, n in enumerate(shape):
                root, per_channel = self.shrink.get((name, d), (None, 0))
                size *= n - per_channel * (self.sizes[root] - kept[root]) if root is not None else n
            total += size
        return total

    def params(self, t: int) -> int:
        """Parameter count at prefix ``t``: predicted, or measured on a pruned copy when :attr:`exact`."""
        if not self.exact:
            return self.predicted(t)
        if t not in self._measured:
            self._measured[t] = count_params(self.build(t))
        return self._measured[t]

    def build(self, t: int) -> nn.Module:
        """A pruned copy of the reference model at prefix ``t``."""
        work, kept = copy.deepcopy(self.model), self.keep(t)
        with _traceable(work):
            dg, groups = self._groups(work)
            if groups.keys() != self.sizes.keys():  # the traced graph is deterministic; guard anyway
                raise RuntimeError("filter pruning: the dependency graph changed between two traces of one model")
            for root, group in groups.items():
                drop = self.ranking[root][: self.sizes[root] - kept[root]]
                if len(drop):
                    dg.get_pruning_group(
                        group[0].dep.target.module, group[0].dep.handler, sorted(drop.tolist())
                    ).prune()
        return work

    def closest(self, target: float) -> int:
        """The prefix whose parameter count is nearest to ``target`` (bisection; counts grow with the prefix)."""
        n = len(self.order)
        lo = bisect.bisect_left(range(n + 1), target, hi=n, key=self.params)  # first prefix with params >= target
        if lo > 0 and abs(self.params(lo - 1) - target) <= abs(self.params(lo) - target):
            lo -= 1
        return lo


def _norm_groups(group: tp.dependency.Group) -> int:
    """Least common multiple of the ``num_groups`` of the ``nn.GroupNorm`` layers in ``group`` (1 if none)."""
    norms = [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.GroupNorm)]
    return math.lcm(1, *(m.num_groups for m in norms))


def _unit_ranking(importance: torch.Tensor, unit: int) -> torch.Tensor:
    """Channel indices, least important first, ordered so that every prefix of ``k * unit`` entries holds the ``k``
    least important channels of each of the ``unit`` consecutive blocks of channels (``unit`` divides the count)."""
    blocks = importance.view(unit, -1)
    within = torch.argsort(blocks, dim=1, stable=True)  # (unit, block size): ranks inside each block
    offsets = torch.arange(unit).unsqueeze(1) * blocks.shape[1]
    return (within + offsets).T.reshape(-1)


def _is_grouped_conv(m: nn.Module) -> bool:
    """A conv with channel groups other than depthwise (Torch-Pruning couples depthwise in/out channels itself)."""
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


class _traceable:
    """Context: eval mode and gradients on, as Torch-Pruning's autograd tracing needs; restored on exit."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.grad = torch.is_grad_enabled()
        self.frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad}
        self.model.eval()
        torch.set_grad_enabled(True)
        for p in self.model.parameters():
            p.requires_grad_(True)
        return self.model

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        self.model.train(self.training)
        for n, p in self.model.named_parameters():  # pruned parameters are new objects: go by name
            p.requires_grad_(n not in self.frozen)
        return False


def _traced_call(example: ExampleInput) -> dict:
    """Torch-Pruning's ``build_dependency`` arguments for ``example``: ``example_inputs`` (a tensor, a tuple of
    positional or a dict of keyword tensors), or a ``forward_fn`` running a callable."""
    if example.call is not None:
        return {"example_inputs": None, "forward_fn": lambda model, _inputs: example.call(model)}
    return {"example_inputs": example.inputs()}


def _classifier(model: nn.Module, example: ExampleInput) -> tuple[str | None, tuple]:
    """Name of the last Conv/Linear the forward pass runs (its outputs are the model's) and the output shape."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(names[m])) for m in names if isinstance(m, _ROOTS)]
    was_training = model.training
    try:
        out = first_tensor(example.run(model.eval()))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return (seen[-1] if seen else None), tuple(out.shape) if out is not None else ()


# What Torch-Pruning raises on an architecture it cannot trace or narrow consistently (tuple outputs, attention heads
# whose query, key and value layers it narrows independently): the model, not a bug of this library.
_UNPRUNABLE = (RuntimeError, AttributeError, TypeError, IndexError)


def _unprunable(model: nn.Module, e: Exception) -> ConfigError:
    first = first_line(e, 200)
    return ConfigError(
        f"filter pruning cannot narrow {type(model).__name__}: Torch-Pruning failed ({type(e).__name__}: {first}); "
        "attention layers and models with tuple outputs need magnitude pruning or compress instead"
    )


def _filter_plan(model: nn.Module, layers: dict[str, nn.Module], example: ExampleInput) -> _FilterPlan:
    """The filter plan of ``model``; a :class:`ConfigError` (one line) for an architecture Torch-Pruning cannot
    trace."""
    try:
        return _FilterPlan(model, layers, example)
    except _UNPRUNABLE as e:
        raise _unprunable(model, e) from e


def _prune_filters(model: nn.Module, rate: float, layers: dict[str, nn.Module], example: ExampleInput) -> nn.Module:
    """Uniform L1 filter pruning of ``model`` to ``rate``; returns a pruned copy."""
    total = count_params(model)
    target = (1.0 - rate) * total
    plan = _filter_plan(model, layers, example)
    reachable = 1.0 - plan.params(0) / total
    if rate - reachable > 1e-9:
        raise _unreachable(rate, reachable, "filter", "every prunable channel group down to one channel")
    t = plan.closest(target)
    out = plan.build(t)
    if count_params(out) != plan.predicted(t):  # a layer whose size is not linear in its channels: measure instead
        plan.exact = True
        t = plan.closest(target)
        out = plan.build(t)
    was_training = out.training
    try:
        result = first_tensor(example.run(out.eval()))
    except _UNPRUNABLE as e:  # narrowed layers that no longer fit together (attention heads)
        raise _unprunable(model, e) from e
    finally:
        out.train(was_training)
    shape = tuple(result.shape) if result is not None else ()
    if shape != plan.out_shape:  # pragma: no cover - the classifier keeps its outputs
        raise RuntimeError(f"filter pruning changed the output shape {plan.out_shape} -> {shape}")
    return out

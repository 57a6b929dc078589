"""Compression methods: one registry of what compresses a model, and how each labels its rows.

A method is a frozen dataclass whose fields are its options, each declared with :func:`option` (default, one-line
description, allowed values). An instance applies itself (``method.apply(model, rate)`` returns a compressed copy
and leaves ``model`` alone), names its results rows (``method.label``) and builds its per-layer table
(``method.report(model, compressed)``). Registered methods:

``"svd"``
    Truncated SVD of every eligible Conv2d and Linear layer (:func:`smoothcompress.compress`); options
    ``allocation``, ``scheme``, ``bn_aware``, ``rank_multiple``; label ``"svd-<allocation>-<scheme>"``.
``"cp"``, ``"tucker"``
    CP or Tucker-2 factorization of every conv kernel larger than ``1 x 1`` (:mod:`smoothcompress.tensorfactor`,
    the ``tensor`` extra), the channel-scheme SVD of the other layers; options ``allocation``, ``bn_aware``,
    ``rank_multiple`` (``scheme`` is the method's); label ``"<name>-<allocation>"``. ``"cp+bn"`` and
    ``"tucker+bn"`` re-estimate the BatchNorm statistics afterwards; ``"cp-seq"``, ``"cp-seq+bn"``,
    ``"tucker-seq"`` and ``"tucker-seq+bn"`` re-solve, in forward order, the last factor of each CP or Tucker
    layer and every channel-scheme layer against the dense model's outputs (:func:`smoothcompress.reconstruct`).
``"magnitude"``, ``"magnitude-layerwise"``, ``"filter"``
    The pruning baselines (:func:`smoothcompress.prune`); no options; the label is the name.
``"svd+bn"``, ``"svd-data"``, ``"svd-data+bn"``, ``"svd-seq"``, ``"svd-seq+bn"``, ``"svd-data-seq"``,
``"magnitude+bn"``, ``"filter+bn"``
    The same, using calibration data (training images, forward passes only, never a gradient step): ``-data``
    truncates each layer in the metric of its inputs (:func:`smoothcompress.calibrate`), ``-seq`` re-solves the
    factorized layers in forward order against the dense model's outputs (:func:`smoothcompress.reconstruct`),
    ``+bn`` re-estimates the BatchNorm statistics afterwards (:func:`smoothcompress.recalibrate_bn`). Label
    ``"<name>-<allocation>-<scheme>"`` for the SVD ones.

Every compressed or pruned copy carries one :class:`~smoothcompress.record.CompressionRecord` as
``model.sc_compression`` (:mod:`smoothcompress.record`): the method and its options, the requested and achieved
rate, the parameter counts before and after, and method-specific details.

The sweep (``[compress] methods = [{ method = "svd", allocation = "global" }, ...]``), the command line
(``smoothcompress compress --method``, ``smoothcompress prune --method``) and the report all dispatch through this
registry, so adding a method is one :func:`register_method` subclass plus its tests; ``tests/test_methods.py``
runs every registered method through apply, rate and save/load.

>>> import smoothcompress as sc
>>> sc.get_method("svd", scheme="spatial").label
'svd-global-spatial'
>>> sc.list_methods("low-rank")
('svd', 'svd+bn', 'svd-data', 'svd-data+bn', 'svd-seq', 'svd-seq+bn', 'svd-data-seq', 'cp', 'cp+bn', 'cp-seq', \
'cp-seq+bn', 'tucker', 'tucker+bn', 'tucker-seq', 'tucker-seq+bn')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from smoothcompress.allocation import ALLOCATIONS, SCHEMES
from smoothcompress.errors import ConfigError
from smoothcompress.inputs import CALIBRATION_IMAGES
from smoothcompress.record import COMPRESSION_ATTR, compression_record, register_label
from smoothcompress.tensorfactor import TENSOR_SCHEMES

__all__ = [
    "Method",
    "SVD",
    "Magnitude",
    "MagnitudeLayerwise",
    "Filter",
    "CP",
    "Tucker",
    "option",
    "register_method",
    "get_method",
    "list_methods",
    "method_from_dict",
    "label_budget",
    "BUDGETS",
]

MATRIX_SCHEMES = tuple(s for s in SCHEMES if s not in TENSOR_SCHEMES)
"""The schemes of the ``svd`` family; the tensor schemes are the methods ``cp`` and ``tucker``."""

FAMILIES = ("low-rank", "pruning")
"""What a method does to the layers: factorizes them (``compress``) or removes weights (``prune``)."""


# ---------------------------------------------------------------------------------------------------------
# Methods and the registry


def option(default: Any, doc: str, choices: Sequence[Any] | None = None) -> Any:
    """Declare a method option: a dataclass field with its default, a one-line description and allowed values.

    The description becomes the ``--flag`` help of the command line; ``choices`` (if given) are checked when the
    method is built.
    """
    return field(default=default, metadata={"doc": doc, "choices": tuple(choices) if choices else None})


@dataclass(frozen=True)
class Method:
    """Base of every compression method; subclasses are frozen dataclasses whose fields are their options.

    A subclass sets ``name`` (the registry key, also the ``method`` of rows and records), ``family`` (one of
    :data:`FAMILIES`), ``nonzero`` (whether its result's size is its number of non-zero parameters) and implements
    :meth:`apply` and :meth:`report`; it overrides :attr:`label` if its options should show in rows.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    nonzero: ClassVar[bool] = False
    data_aware: ClassVar[bool] = False
    """Truncates in the metric of calibration inputs (:func:`smoothcompress.calibrate`)."""
    reconstructs: ClassVar[bool] = False
    """Re-solves the factorized layers in forward order against the dense model (:func:`smoothcompress.reconstruct`)."""
    recalibrates_bn: ClassVar[bool] = False
    """Re-estimates BatchNorm statistics on calibration inputs afterwards (:func:`smoothcompress.recalibrate_bn`)."""

    @classmethod
    def uses_data(cls) -> bool:
        """Whether :meth:`apply` needs calibration data (training images, forward passes only, no gradient)."""
        return cls.data_aware or cls.reconstructs or cls.recalibrates_bn

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind, choices = getattr(self, f.name), type(f.default), f.metadata.get("choices")
            if kind is float and type(value) is int:  # 1 for 1.0, as TOML and JSON may write it
                value = float(value)
                object.__setattr__(self, f.name, value)
            if type(value) is not kind:
                raise ConfigError(
                    f"method {self.name!r}: option {f.name} must be of type {kind.__name__}, got {value!r}"
                )
            if choices and value not in choices:
                raise ConfigError(
                    f"method {self.name!r}: {f.name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
                )

    @classmethod
    def option_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The options: dataclass fields with ``metadata["doc"]`` and ``metadata["choices"]``."""
        return dataclasses.fields(cls)

    def options(self) -> dict[str, Any]:
        """``{option: value}`` of this instance."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def label(self) -> str:
        """The name of this method with these options in rows and reports (``"dense"`` is taken)."""
        return self.name

    def apply(
        self,
        model: nn.Module,
        rate: float,
        *,
        exclude: Iterable[str | type] = (),
        input_shape: Sequence[int] | None = None,
        data: Any = None,
        images: int = CALIBRATION_IMAGES,
        calibration: Any = None,
    ) -> nn.Module:
        """A compressed copy of ``model`` with a fraction ``rate`` of all its parameters removed.

        ``model`` is not modified. The copy carries a :class:`~smoothcompress.record.CompressionRecord` as
        ``sc_compression``.
        ``exclude`` names layers to leave alone (module-name patterns or module types); ``input_shape`` (batch
        included) is an example input for methods that trace the network. Methods that :meth:`uses_data` take
        calibration ``data`` (a Dataset, whose training split is used, a Loader or a tensor of inputs; see
        :func:`smoothcompress.calibration.calibration_batches`) and the number of ``images`` to use; a data-aware
        method also takes a ready ``calibration`` of ``model`` (:func:`smoothcompress.calibrate`), so that one
        calibration serves every rate. Raises :class:`smoothcompress.accounting.RateUnreachable` for a rate out
        of reach, and ConfigError when data is needed but not given.
        """
        raise NotImplementedError

    def _calibration(self, model: nn.Module, data: Any, images: int, calibration: Any):
        """The calibration a data-aware method truncates with: the one given, else one made from ``data``; with
        BatchNorm recalibration to follow, in the metric of centered inputs (``Calibration.center``)."""
        if not self.data_aware:
            return None
        if calibration is None:
            from smoothcompress.calibration import calibrate

            calibration = calibrate(model, self._need_data(data), images)
        return dataclasses.replace(calibration, center=self.recalibrates_bn)

    def _need_data(self, data: Any) -> Any:
        if data is None:
            raise ConfigError(
                f"method {self.name!r} needs calibration data (training images, forward passes only): pass data=..."
                " (a Dataset, a Loader or a tensor of inputs)"
            )
        return data

    def _finish(self, model: nn.Module, compressed: nn.Module, data: Any, images: int) -> nn.Module:
        """Reconstruct the factorized layers and recalibrate BatchNorm statistics if this method does (relative to
        ``model``, the uncompressed one), and record both (and the calibration source)."""
        record = compression_record(compressed)
        details = dict(record.details) if record else {}
        if self.reconstructs:
            from smoothcompress.reconstruction import reconstruct

            done = reconstruct(model, compressed, self._need_data(data), images)
            details["reconstruction"] = done.summary()
        if self.recalibrates_bn:
            from smoothcompress.calibration import describe_source, recalibrate_bn

            data = self._need_data(data)
            recalibrate_bn(compressed, data, images, reference=model)
            details["bn_recalibration"] = describe_source(data, images)
        if record is not None:
            options = {**record.options, **self.options()}
            replaced = dataclasses.replace(record, method=self.name, options=options, details=details)
            setattr(compressed, COMPRESSION_ATTR, replaced)
        return compressed

    def report(self, model: nn.Module, compressed: nn.Module, input_shape: Sequence[int] | None = None):
        """The per-layer table of ``compressed`` against ``model`` (FLOPs only when ``input_shape`` is given)."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: add a :class:`Method` subclass to the registry under its ``name``.

    Raises ``ConfigError`` for a duplicate or missing name, an unknown family, or a class that is not a frozen
    dataclass whose options all have defaults and descriptions (:func:`option`).
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not dataclasses.is_dataclass(cls):
        raise ConfigError(
            f"register_method takes a Method subclass decorated with @dataclass(frozen=True), got {cls!r}"
        )
    if not cls.name or cls.name == "dense":
        raise ConfigError(f"{cls.__name__} needs a class attribute `name` (not 'dense', which names dense rows)")
    if cls.name in _REGISTRY:
        raise ConfigError(f"method {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    if cls.family not in FAMILIES:
        raise ConfigError(f"{cls.__name__}.family must be one of {FAMILIES}, got {cls.family!r}")
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING or "doc" not in f.metadata:
            raise ConfigError(f"{cls.__name__}: option {f.name!r} must be declared with option(default, doc)")
    _REGISTRY[cls.name] = cls
    register_label(cls.name, lambda options: get_method(cls.name, **options).label)
    return cls


def list_methods(family: str | None = None) -> tuple[str, ...]:
    """Names of the registered methods in registration order, optionally only those of one family."""
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}")
    return tuple(n for n, cls in _REGISTRY.items() if family is None or cls.family == family)


def get_method(name: str, **options: Any) -> Method:
    """The registered method ``name`` with the given options, e.g. ``get_method("svd", scheme="spatial")``.

    Raises ``ConfigError`` naming the registered methods for an unknown name, and the method's options for an
    unknown option.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        has = f"options {', '.join(known)}" if known else "no options"
        raise ConfigError(f"method {name!r} has no option {', '.join(unknown)}; it has {has}")
    return cls(**options)


def method_from_dict(entry: Mapping[str, Any]) -> Method:
    """A method from a config entry such as ``{"method": "svd", "allocation": "global", "scheme": "channel"}``."""
    if not isinstance(entry, Mapping) or "method" not in entry:
        raise ConfigError(f"a method entry needs a 'method' name, e.g. {{ method = \"svd\" }}; got {entry!r}")
    options = dict(entry)
    return get_method(options.pop("method"), **options)


# ---------------------------------------------------------------------------------------------------------
# The registered methods

BUDGETS = ("params", "flops", "flops-matched")
"""What a rate asks of a low-rank method (its ``budget`` option): that fraction of parameters removed, that fraction
of FLOPs removed, or the FLOPs of that parameter plan."""


def label_budget(label: str) -> str:
    """The budget (one of :data:`BUDGETS`) a method label states: ``"flops"`` for a label ending in ``-flops``,
    ``"flops-matched"`` for ``-flops-matched``, else ``"params"`` (every pruning label, the dense row)."""
    return next((b for b in BUDGETS[1:] if label.endswith(f"-{b}")), "params")


@register_method
@dataclass(frozen=True)
class SVD(Method):
    """Truncated SVD of every eligible Conv2d and Linear layer, no fine-tuning (:func:`smoothcompress.compress`)."""

    name: ClassVar[str] = "svd"
    family: ClassVar[str] = "low-rank"

    allocation: str = option("global", "how ranks are shared out across layers (see lowrank)", tuple(ALLOCATIONS))
    scheme: str = option("channel", "how a conv kernel becomes a matrix (see lowrank)", MATRIX_SCHEMES)
    bn_aware: bool = option(False, "truncate the BN-scaled weight (off by default: benchmarks/results/allocation.json)")
    rank_multiple: int = option(1, "round ranks to multiples, e.g. 16 for CPU speed (--latency: 1 lets its table pick)")
    budget: str = option(
        "params",
        "what a rate asks for: 'params' removes that fraction of all parameters; 'flops' removes that fraction of "
        "the dense FLOPs (compress(flops=1 - rate)); 'flops-matched' keeps the FLOPs of the parameter plan at that "
        "rate; both FLOPs budgets allocate ranks to save FLOPs, and the parameter count is their own",
        BUDGETS,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank_multiple < 1:
            raise ConfigError(f"method 'svd': rank_multiple must be a positive int, got {self.rank_multiple}")

    @property
    def label(self) -> str:
        """``"svd-<allocation>-<scheme>"``, then ``"-bn"`` if ``bn_aware``, ``"-x<k>"`` for a rank multiple and
        ``"-flops"`` or ``"-flops-matched"`` for a FLOPs budget."""
        return f"{self.name}-{self.allocation}-{self.scheme}{self._suffix()}"

    def _suffix(self) -> str:
        """``"-bn"`` if ``bn_aware``, ``"-x<k>"`` for a rank multiple, ``"-<budget>"`` for a FLOPs budget."""
        suffix = ("-bn" if self.bn_aware else "") + (f"-x{self.rank_multiple}" if self.rank_multiple != 1 else "")
        return suffix + ("" if self.budget == "params" else f"-{self.budget}")

    def apply(
        self,
        model: nn.Module,
        rate: float | None,
        *,
        exclude: Iterable[str | type] = (),
        input_shape: Sequence[int] | None = None,
        data: Any = None,
        images: int = CALIBRATION_IMAGES,
        calibration: Any = None,
        ranks: Mapping[str, int] | None = None,
        flops: float | None = None,
        latency: float | None = None,
        runtime: str = "eager",
    ) -> nn.Module:
        """:func:`smoothcompress.compress` with these options; ``ranks`` pins some layers' ranks (``rate=None``:
        only those); ``flops`` is a FLOPs budget (fraction of the dense FLOPs kept; ``rate=None``: that budget
        alone), counted on ``input_shape`` (needed only with a FLOPs budget, and only for non-registry models);
        ``latency`` a budget of measured time in ``runtime`` on ``input_shape`` (batch included, required); with it,
        ``rank_multiple=1`` lets the latency table choose the multiple (1, 8 or 16). With ``budget="flops"``,
        ``rate`` is the fraction of FLOPs removed; with ``budget="flops-matched"``, it names the parameter plan whose
        FLOPs fraction becomes the budget."""
        from smoothcompress.lowrank import compress

        calibration = self._calibration(model, data, images, calibration)

        def plan(rate: float | None, flops: float | None) -> nn.Module:
            return compress(
                model,
                rate,
                self.allocation,
                self.scheme,
                ranks=ranks,
                exclude=exclude,
                bn_aware=self.bn_aware,
                rank_multiple=None if latency is not None and self.rank_multiple == 1 else self.rank_multiple,
                calibration=calibration,
                flops=flops,
                input_shape=input_shape if flops is not None or latency is not None else None,
                latency=latency,
                runtime=runtime,
            )

        if self.budget == "params" or rate is None:
            return self._finish(model, plan(rate, flops), data, images)
        if self.budget == "flops":
            kept = 1.0 - rate
        else:
            from smoothcompress.accounting import count_flops

            kept = count_flops(plan(rate, None), input_shape) / count_flops(model, input_shape)
        small = self._finish(model, plan(None, kept if flops is None else min(flops, kept)), data, images)
        record = compression_record(small)
        details = {**record.details, "budget": {"kind": self.budget, "rate": float(rate), "flops_kept": kept}}
        setattr(small, COMPRESSION_ATTR, dataclasses.replace(record, details=details))
        return small

    def report(self, model: nn.Module, compressed: nn.Module, input_shape: Sequence[int] | None = None):
        """:func:`smoothcompress.compress_report`."""
        from smoothcompress.lowrank import compress_report

        return compress_report(model, compressed, input_shape)


@dataclass(frozen=True)
class _Pruning(Method):
    """A pruning baseline of :mod:`smoothcompress.pruning` (loaded on first use: it imports Torch-Pruning)."""

    family: ClassVar[str] = "pruning"

    @property
    def pruning_method(self) -> str:
        """The :func:`smoothcompress.prune` method: the name without a ``"+bn"`` suffix."""
        return self.name.removesuffix("+bn")

    def apply(
        self,
        model: nn.Module,
        rate: float,
        *,
        exclude: Iterable[str | type] = (),
        input_shape: Sequence[int] | None = None,
        data: Any = None,
        images: int = CALIBRATION_IMAGES,
        calibration: Any = None,
    ) -> nn.Module:
        """:func:`smoothcompress.prune` with this method's pruning criterion (``calibration`` is not used)."""
        from smoothcompress.pruning import prune

        pruned = prune(model, rate, method=self.pruning_method, exclude=exclude, input_shape=input_shape)
        return self._finish(model, pruned, data, images)

    def report(self, model: nn.Module, compressed: nn.Module, input_shape: Sequence[int] | None = None):
        """:func:`smoothcompress.prune_report`."""
        from smoothcompress.pruning import prune_report

        return prune_report(model, compressed, self.pruning_method, input_shape)


@register_method
@dataclass(frozen=True)
class Magnitude(_Pruning):
    """Global unstructured magnitude pruning: the smallest ``|w|`` of all Conv/Linear weights are zeroed."""

    name: ClassVar[str] = "magnitude"
    nonzero: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class MagnitudeLayerwise(_Pruning):
    """Unstructured magnitude pruning with the same fraction of entries zeroed in every Conv/Linear weight."""

    name: ClassVar[str] = "magnitude-layerwise"
    nonzero: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class Filter(_Pruning):
    """Structured L1 filter pruning through Torch-Pruning: channels are physically removed."""

    name: ClassVar[str] = "filter"


# ---------------------------------------------------------------------------------------------------------
# Data-aware methods: calibration data (training images), forward passes only, no gradient step


@register_method
@dataclass(frozen=True)
class SVDRecalibrated(SVD):
    """Plain SVD, then BatchNorm statistics re-estimated on calibration images (:func:`recalibrate_bn`)."""

    name: ClassVar[str] = "svd+bn"
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class SVDData(SVD):
    """Whitened SVD: each layer truncated in the metric of its calibration inputs, ranks by output error."""

    name: ClassVar[str] = "svd-data"
    data_aware: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class SVDDataRecalibrated(SVD):
    """Whitened SVD (``svd-data``), then BatchNorm statistics re-estimated (``+bn``)."""

    name: ClassVar[str] = "svd-data+bn"
    data_aware: ClassVar[bool] = True
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class SVDSequential(SVD):
    """Truncated SVD at the allocated ranks, then every factorized layer re-solved in forward order against the
    dense model's outputs, in closed form (:func:`smoothcompress.reconstruct`)."""

    name: ClassVar[str] = "svd-seq"
    reconstructs: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class SVDSequentialRecalibrated(SVD):
    """``svd-seq``, then BatchNorm statistics re-estimated (``+bn``)."""

    name: ClassVar[str] = "svd-seq+bn"
    reconstructs: ClassVar[bool] = True
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class SVDDataSequential(SVD):
    """Whitened SVD (``svd-data``: ranks allocated by output error on the dense model's inputs), then every
    factorized layer re-solved in forward order (``-seq``)."""

    name: ClassVar[str] = "svd-data-seq"
    data_aware: ClassVar[bool] = True
    reconstructs: ClassVar[bool] = True


# ---------------------------------------------------------------------------------------------------------
# Tensor factorizations (the ``tensor`` extra): CP and Tucker-2 of every conv kernel larger than 1x1


@register_method
@dataclass(frozen=True)
class CP(SVD):
    """CP factorization of every conv kernel larger than ``1 x 1`` (four standard convs), the channel-scheme SVD of
    every other layer, ranks allocated globally (:func:`smoothcompress.compress` with ``scheme="cp"``)."""

    name: ClassVar[str] = "cp"
    scheme: str = option("cp", "the tensor factorization of conv kernels (see tensorfactor)", ("cp",))

    @property
    def label(self) -> str:
        """``"<name>-<allocation>"``, then the suffixes of :attr:`SVD.label`."""
        return f"{self.name}-{self.allocation}{self._suffix()}"


@register_method
@dataclass(frozen=True)
class CPRecalibrated(CP):
    """``cp``, then BatchNorm statistics re-estimated on calibration images (``+bn``)."""

    name: ClassVar[str] = "cp+bn"
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class CPSequential(CP):
    """``cp``, then in forward order the last factor of every CP layer, and every channel-scheme layer, re-solved
    against the dense model's outputs in closed form (:func:`smoothcompress.reconstruct`)."""

    name: ClassVar[str] = "cp-seq"
    reconstructs: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class CPSequentialRecalibrated(CP):
    """``cp-seq``, then BatchNorm statistics re-estimated (``+bn``)."""

    name: ClassVar[str] = "cp-seq+bn"
    reconstructs: ClassVar[bool] = True
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class Tucker(CP):
    """Tucker-2 factorization of every conv kernel larger than ``1 x 1`` (1x1, core and 1x1 convs), the
    channel-scheme SVD of every other layer (:func:`smoothcompress.compress` with ``scheme="tucker"``)."""

    name: ClassVar[str] = "tucker"
    scheme: str = option("tucker", "the tensor factorization of conv kernels (see tensorfactor)", ("tucker",))


@register_method
@dataclass(frozen=True)
class TuckerRecalibrated(Tucker):
    """``tucker``, then BatchNorm statistics re-estimated on calibration images (``+bn``)."""

    name: ClassVar[str] = "tucker+bn"
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class TuckerSequential(Tucker):
    """``tucker``, then in forward order the last factor of every Tucker layer, and every channel-scheme layer,
    re-solved against the dense model's outputs in closed form (:func:`smoothcompress.reconstruct`)."""

    name: ClassVar[str] = "tucker-seq"
    reconstructs: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class TuckerSequentialRecalibrated(Tucker):
    """``tucker-seq``, then BatchNorm statistics re-estimated (``+bn``)."""

    name: ClassVar[str] = "tucker-seq+bn"
    reconstructs: ClassVar[bool] = True
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class MagnitudeRecalibrated(Magnitude):
    """Global magnitude pruning, then BatchNorm statistics re-estimated on calibration images."""

    name: ClassVar[str] = "magnitude+bn"
    recalibrates_bn: ClassVar[bool] = True


@register_method
@dataclass(frozen=True)
class FilterRecalibrated(Filter):
    """L1 filter pruning, then BatchNorm statistics re-estimated on calibration images."""

    name: ClassVar[str] = "filter+bn"
    recalibrates_bn: ClassVar[bool] = True

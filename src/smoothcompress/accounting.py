"""Parameter and FLOP accounting, the per-layer table shared by ``compress`` and ``prune``, and the rate helpers.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2 FLOPs), never
from a hand-written counter. :func:`check_rate` and :func:`bisect_boundary` serve both compression and pruning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from smoothcompress.errors import ConfigError, SmoothcompressError
from smoothcompress.inputs import ExampleInput, as_example, zeros_input

__all__ = [
    "count_params",
    "count_flops",
    "flops_by_module",
    "trace_flops",
    "measure_latency",
    "timed_input",
    "LayerRow",
    "LayerTable",
    "layer_report",
    "RateUnreachable",
    "check_rate",
    "bisect_boundary",
    "RESHAPED",
    "module_shapes",
    "reshaped_modules",
]

RESHAPED = "reshaped"
"""Key of a :class:`~smoothcompress.record.CompressionRecord`'s ``details`` under which a method that changes
layer shapes in place (filter pruning) lists the modules it reshaped (:func:`reshaped_modules`);
:func:`smoothcompress.save` checks that :func:`smoothcompress.load` can rebuild each of them."""


class RateUnreachable(SmoothcompressError):
    """A requested compression or pruning rate that the model's eligible layers cannot reach.

    Raised by :func:`smoothcompress.compress` and :func:`smoothcompress.prune`; the message names the largest
    reachable rate. A sweep records such a cell as a result ("out of reach") instead of stopping.
    """


def check_rate(rate) -> float:
    """``rate`` as a float, checked to be a compression or pruning rate: a finite number in ``[0, 1)``.

    Raises
    ------
    ValueError
        ``rate`` is not a real number (bools are rejected), or lies outside ``[0, 1)`` (NaN and inf included).
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise ConfigError(f"rate must be a number in [0, 1), got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"rate must be in [0, 1) (the fraction of all parameters removed, e.g. 0.7), got {rate}")
    return float(rate)


def bisect_boundary(holds: Callable[[float], bool], lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    """Bracket, to float precision, where a predicate that is true then false on ``[lo, hi]`` changes.

    Parameters
    ----------
    holds : callable float -> bool
        Monotone on ``[lo, hi]``: true up to some point, false after it. ``holds(lo)`` is assumed true and
        ``holds(hi)`` false; neither end is evaluated.
    lo, hi : float
        The interval.

    Returns
    -------
    (float, float)
        ``(a, b)`` with ``holds(a)`` true (or ``a == lo``) and ``holds(b)`` false (or ``b == hi``), after 60
        halvings: ``b - a`` is ``(hi - lo) / 2**60`` or one float step, whichever is larger.
    """
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo, hi


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters of ``model`` (all of them: weights, biases, BatchNorm affine).

    Parameters
    ----------
    model : nn.Module
    nonzero : bool
        Count only non-zero entries; this is the size of an unstructured-pruned model.
    """
    params = list(model.parameters())
    if nonzero:
        return int(sum(int(torch.count_nonzero(p.detach())) for p in params))
    return int(sum(p.numel() for p in params))


def module_shapes(model: nn.Module) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{module path: {tensor name: shape}}`` of the tensors each module of ``model`` owns itself (parameters
    and buffers, not its children's); modules that own none are absent."""
    shapes = {}
    for name, m in model.named_modules():
        own = {k: tuple(t.shape) for k, t in (*m._parameters.items(), *m._buffers.items()) if t is not None}
        if own:
            shapes[name] = own
    return shapes


def reshaped_modules(before: nn.Module, after: nn.Module) -> list[str]:
    """Paths of the modules of ``after`` whose own tensors differ from those of ``before`` at the same path in
    shape or in names, or that ``before`` does not have (see :func:`module_shapes`), in module order."""
    old = module_shapes(before)
    return [name for name, shapes in module_shapes(after).items() if old.get(name) != shapes]


def example_input(model: nn.Module, input_shape: Iterable[int]) -> torch.Tensor:
    """A zero tensor of ``input_shape`` (batch included) on ``model``'s device, in its floating dtype.

    Kept for callers of earlier versions; :func:`smoothcompress.inputs.as_example` takes every form of input.
    """
    return zeros_input(model, input_shape)


def flops_by_module(
    model: nn.Module, input_shape: Iterable[int] | None = None, *, example: object = None
) -> dict[str, int]:
    """FLOPs of one forward pass, by module name (``""`` is the whole model).

    Parameters
    ----------
    model : nn.Module
        Counted in eval mode (each module's training flag is restored afterwards), so BatchNorm statistics are
        left untouched.
    input_shape : tuple of int, optional
        Full shape of a zero float input including the batch dimension, e.g. ``(1, 3, 32, 32)``.
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The input instead (:func:`smoothcompress.inputs.as_example`), e.g. int64 token ids (B, T). With neither,
        the registry's input shape.
    """
    return trace_flops(model, input_shape, example=example)[0]


def trace_flops(
    model: nn.Module,
    input_shape: Iterable[int] | None = None,
    inputs_of: Iterable[str] = (),
    *,
    example: object = None,
) -> tuple[dict[str, int], dict[str, list[tuple[int, ...]]]]:
    """:func:`flops_by_module`, and the input shape of every call of the modules named in ``inputs_of``.

    One forward pass (eval mode, no gradient, training flags restored afterwards; no copy of the model is made)
    on ``example``, else a zero input of ``input_shape``, else of the registry's shape
    (:func:`smoothcompress.inputs.as_example`). Returns ``(flops by module name, {name: [shape of the first
    tensor argument of each call]})``; a module that the forward pass never calls has no shapes.
    """
    x = as_example(model, example, input_shape)
    named = dict(model.named_modules())
    modes = {name: m.training for name, m in named.items()}
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in inputs_of}

    def record(name):
        def hook(module, args, kwargs):
            t = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if t is not None:
                shapes[name].append(tuple(t.shape))

        return hook

    handles = [named[name].register_forward_pre_hook(record(name), with_kwargs=True) for name in shapes]
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter:
            x.run(model)
    finally:
        for h in handles:
            h.remove()
        for name, m in named.items():
            m.training = modes[name]
    out: dict[str, int] = {}
    for key, by_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # Keys are "<RootClass>.<path>"; strip the root so names match ``model.named_modules()``.
        name = key.split(".", 1)[1] if "." in key else ""
        out[name] = int(sum(by_op.values()))
    out[""] = int(counter.get_total_flops())
    return out, shapes


def measure_latency(
    models: Mapping[str, nn.Module] | Iterable[nn.Module],
    input_shape: Iterable[int] | None = None,
    reps: int = 20,
    warmup: int = 3,
    *,
    example: object = None,
    fastest: bool = False,
) -> dict[str, float] | list[float]:
    """Median wall-clock seconds of one forward pass of each model, timed in turns (eval mode, no gradient).

    The models run one after the other in every repetition (dense, compressed, dense, ...), so a change of load
    on the machine hits all of them alike; the median of ``reps`` timed passes is reported, after ``warmup``
    untimed ones. Each model is timed as it is (device, dtype, memory format) and put back in its training mode.

    Parameters
    ----------
    models : mapping of name to nn.Module, or iterable of nn.Module
    input_shape : tuple of int, optional
        Full input shape with the batch dimension, e.g. ``(128, 3, 32, 32)``: a random normal input.
    reps, warmup : int
        Timed and untimed forward passes per model.
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The input instead (:func:`smoothcompress.inputs.as_example`), moved to each model's device.
    fastest : bool
        Report the fastest timed pass instead of the median (the cost of the work itself, on a busy machine).

    Returns
    -------
    dict or list of float
        Seconds per forward pass, keyed like ``models``.
    """
    import statistics
    import time

    named = dict(models) if isinstance(models, Mapping) else dict(enumerate(models))
    if reps < 1 or warmup < 0:
        raise ConfigError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    inputs = {k: timed_input(m, input_shape, example) for k, m in named.items()}
    modes = {k: m.training for k, m in named.items()}
    times: dict = {k: [] for k in named}

    def sync(x: ExampleInput) -> None:
        t = next(iter(x.tensors()), None)
        if t is not None and t.device.type == "cuda":
            torch.cuda.synchronize(t.device)

    try:
        for m in named.values():
            m.eval()
        with torch.no_grad():
            for i in range(warmup + reps):
                for k, m in named.items():
                    x = inputs[k]
                    sync(x)
                    t0 = time.perf_counter()
                    x.run(m)
                    sync(x)
                    if i >= warmup:
                        times[k].append(time.perf_counter() - t0)
    finally:
        for k, m in named.items():
            m.train(modes[k])
    stat = min if fastest else statistics.median
    medians = {k: stat(v) for k, v in times.items()}
    return medians if isinstance(models, Mapping) else [medians[k] for k in named]


def timed_input(model: nn.Module, input_shape: Iterable[int] | None, example: object) -> ExampleInput:
    """What :func:`measure_latency` times ``model`` on: ``example`` on its device, else a random normal input of
    ``input_shape`` on its device and dtype, in channels_last memory format when its first conv weight is."""
    if example is None:
        return ExampleInput((_like_model(model, as_example(model, None, input_shape).args[0].normal_()),))
    ref = next(iter(model.parameters()), None)
    ex = as_example(model, example)
    return ex.to(ref.device) if ref is not None else ex


def _like_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last memory format when ``model``'s first conv weight is (a 4-D input), else as is."""
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    if x.dim() == 4 and w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def count_flops(model: nn.Module, input_shape: Iterable[int] | None = None, *, example: object = None) -> int:
    """FLOPs of one forward pass on ``example`` (a tensor of any dtype, a tuple or dict of tensors, a callable),
    else on a zero input of ``input_shape`` (batch dimension included), else of the registry's shape."""
    return flops_by_module(model, input_shape, example=example)[""]


@dataclass
class LayerRow:
    """One weight layer of the original model and what it became."""

    name: str
    kind: str  # "conv" | "linear" | type name of anything else
    shape: tuple  # weight shape before
    status: str  # "factorized" | "dense" | "pruned" | "skipped: <reason>"
    rank: int | None  # kept rank of a factorized layer
    full_rank: int | None
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None
    energy: float | None  # fraction of spectral energy kept (sum s_i^2 kept / total)


@dataclass
class LayerTable:
    """Per-layer and whole-model accounting of a compression or pruning.

    ``str(report)`` is a printable table; :meth:`to_dict` gives plain data (JSON-ready).
    """

    rows: list[LayerRow]
    params_before: int
    params_after: int
    flops_before: int | None = None
    flops_after: int | None = None
    nonzero: bool = False  # params_after counts non-zeros (unstructured pruning)
    method: str = ""
    extra: dict = field(default_factory=dict)
    latency_before: float | None = None  # median seconds per forward pass (measure_latency), when measured
    latency_after: float | None = None
    latency_shape: tuple | None = None  # the input shape timed, batch included

    @property
    def rate(self) -> float:
        """Fraction of all parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate"] = self.rate
        return d

    def __str__(self) -> str:
        head = ["layer", "shape", "status", "rank", "params", "FLOPs", "energy"]
        lines = []
        for r in self.rows:
            rank = f"{r.rank}/{r.full_rank}" if r.rank is not None else ""
            flops = (
                f"{_si(r.flops_before)} -> {_si(r.flops_after)}"
                if r.flops_before is not None and r.flops_after is not None
                else ""
            )
            lines.append(
                [
                    r.name,
                    "x".join(map(str, r.shape)),
                    r.status,
                    rank,
                    f"{_si(r.params_before)} -> {_si(r.params_after)}",
                    flops,
                    f"{r.energy:.4f}" if r.energy is not None else "",
                ]
            )
        widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*row) for row in lines]
        what = "non-zero params" if self.nonzero else "params"
        out.append(
            f"total {what}: {self.params_before:,} -> {self.params_after:,} "
            f"({100 * self.rate:.1f}% removed{', ' + self.method if self.method else ''})"
        )
        if self.flops_before is not None and self.flops_after is not None:
            ratio = self.flops_after / self.flops_before if self.flops_before else float("nan")
            out.append(f"total FLOPs: {_si(self.flops_before)} -> {_si(self.flops_after)} ({ratio:.2f}x)")
        if self.latency_before is not None and self.latency_after is not None:
            speedup = self.latency_before / self.latency_after if self.latency_after else float("nan")
            shape = "x".join(map(str, self.latency_shape or ()))
            out.append(
                f"latency: {1e3 * self.latency_before:.3g} ms -> {1e3 * self.latency_after:.3g} ms "
                f"({speedup:.2f}x faster; median forward pass, input {shape}, eval, no_grad)"
            )
        budget = self.extra.get("details", {}).get("latency") if isinstance(self.extra, dict) else None
        if isinstance(budget, dict) and budget.get("summary"):
            out.append(str(budget["summary"]))
        return "\n".join(out)


def _si(n: int | None) -> str:
    if n is None:
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules that own a weight of 2 or more dims (conv, linear and the like), by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2
    }


def layer_report(
    before: nn.Module,
    after: nn.Module,
    input_shape: Iterable[int] | None = None,
    notes: Mapping[str, str] | None = None,
    nonzero: bool = False,
    method: str = "",
    *,
    example: object = None,
) -> LayerTable:
    """Compare two models layer by layer, matching modules by name.

    Parameters
    ----------
    before, after : nn.Module
        The original model and its compressed or pruned version. A layer of ``after`` may be a replacement
        module at the same name; if it has ``rank``/``full_rank``/``energy`` attributes they are reported.
    input_shape : tuple of int, optional
        Full input shape (batch included) for FLOP counts; ``None`` (and no ``example``) skips FLOPs.
    notes : mapping, optional
        Status to report for some layers, e.g. ``{"conv1": "skipped: grouped conv"}``.
    nonzero : bool
        Count non-zero parameters of ``after`` (unstructured pruning).
    method : str
        Label printed with the totals.
    example : Tensor, tuple, dict, callable or ExampleInput, optional
        The input to count FLOPs on instead of a zero input of ``input_shape`` (e.g. int64 token ids (B, T)).
    """
    notes = dict(notes or {})
    counted = example is not None or input_shape is not None
    fb = flops_by_module(before, input_shape, example=example) if counted else None
    fa = flops_by_module(after, input_shape, example=example) if counted else None
    after_modules = dict(after.named_modules())
    rows = []
    for name, m in _weight_layers(before).items():
        new = after_modules.get(name)
        p_before = count_params(m)
        p_after = count_params(new, nonzero=nonzero) if new is not None else 0
        rank = getattr(new, "rank", None)
        if name in notes:
            status = notes[name]
        elif rank is not None:
            status = "factorized"
        elif new is None:
            status = "removed"
        elif nonzero and p_after < p_before or tuple(new.weight.shape) != tuple(m.weight.shape):
            status = "pruned"
        else:
            status = "dense"
        kind = {nn.Conv2d: "conv", nn.Linear: "linear"}.get(type(m), type(m).__name__)
        rows.append(
            LayerRow(
                name=name,
                kind=kind,
                shape=tuple(m.weight.shape),
                status=status,
                rank=int(rank) if rank is not None else None,
                full_rank=getattr(new, "full_rank", None),
                params_before=p_before,
                params_after=p_after,
                flops_before=fb.get(name) if fb is not None else None,
                flops_after=fa.get(name) if fa is not None else None,
                energy=getattr(new, "energy", None),
            )
        )
    return LayerTable(
        rows=rows,
        params_before=count_params(before),
        params_after=count_params(after, nonzero=nonzero),
        flops_before=fb[""] if fb is not None else None,
        flops_after=fa[""] if fa is not None else None,
        nonzero=nonzero,
        method=method,
    )

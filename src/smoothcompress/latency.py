"""Measured time of layers and models in a runtime: the table behind ``compress(model, latency=F)``.

A latency budget needs to know how long each eligible layer takes, dense and factorized at each rank, on this
machine, in the runtime the model will run in. :func:`measure_table` measures it:

* each layer's input shapes come from one forward pass of the model on the example input (batch included);
* each layer is then timed alone on random inputs of those shapes (summed over its calls), dense and as a
  factorized layer (:mod:`smoothcompress.factorized`, random factors: time does not depend on the values) at a
  coarse grid of ranks (:func:`rank_grid`), in the runtime (:data:`RUNTIMES`):

  - ``"eager"``: the PyTorch module in eval mode without gradients, on the layer's device, dtype and memory
    format (:func:`smoothcompress.accounting.measure_latency`);
  - ``"onnxruntime"``: the layer alone exported to ONNX (the TorchScript exporter, which is fast for one layer and
    emits the same Conv and Gemm/MatMul nodes), run by an onnxruntime CPU session with all graph optimisations;
    whole models go through :func:`smoothcompress.export_onnx`'s exporter;

* the whole dense model is timed once; what its time exceeds the sum of its layers' (BatchNorm, activations,
  pooling, the runtime's own overhead) is a fixed part that compression does not change.

Every measurement runs ``warmup`` untimed passes and then ``reps`` timed ones, with the thread count of
:class:`Timing`. A layer's variants (dense and every measured rank) run in turns and each keeps its fastest pass:
one layer takes well under a scheduler's time slice, so on a busy machine an interrupted pass is much slower than
the others, and the fastest pass is the layer's own cost. The whole dense model is timed the same way (its fastest
pass); what it takes beyond the layers' sum goes to the fixed part. The end-to-end check of a result
(:func:`measure_models`) keeps the median of dense and compressed passes timed in turns.

Between the measured ranks a layer's time is interpolated linearly, after the measured times are made
non-decreasing in the rank (a running maximum, so noise never makes a larger rank look faster). Ranks that are
multiples of 8 are interpolated between measured multiples of 8, every other rank between measured ranks off the
multiples of 8 (``1, 3, 7, 15, 31, ...`` and the largest such rank that saves parameters; a rank past the last
one measured is interpolated between all measured ranks): kernels often run aligned channel counts faster, and the
table keeps both.

Measurements are cached on disk (:func:`cache_path`: ``$SMOOTHCOMPRESS_LATENCY_CACHE``, else
``$XDG_CACHE_HOME/smoothcompress/latency.json``, else ``~/.cache/smoothcompress/latency.json``), one entry per
key: runtime, thread count, torch (and onnxruntime) version, host name, device, layer kind and configuration,
scheme and rank, input shapes, dtype and memory format. The file is rewritten atomically
(:func:`smoothcompress.files.write_json`).

A custom ``timer`` (:class:`Timing`) replaces the measurements: ``timer(module, example) -> seconds`` for one
forward pass of ``module`` on ``example`` (an :class:`~smoothcompress.inputs.ExampleInput`); tests use a
deterministic cost model. Its results are cached only when it has a ``name`` attribute, which then stands for the
runtime in the keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smoothcompress.accounting import RateUnreachable, measure_latency
from smoothcompress.errors import ConfigError
from smoothcompress.extras import require
from smoothcompress.factorized import FactorizedConv2d, FactorizedLinear
from smoothcompress.files import write_json
from smoothcompress.inputs import ExampleInput
from smoothcompress.layers import is_linear_like, layer_weight
from smoothcompress.provenance import device_name

__all__ = [
    "RUNTIMES",
    "ALIGNMENT",
    "CACHE_ENV",
    "Timer",
    "Timing",
    "LayerTimes",
    "LatencyTable",
    "LatencyUnreachable",
    "check_latency",
    "check_runtime",
    "cache_path",
    "rank_grid",
    "measure_table",
    "measure_models",
]

RUNTIMES = ("eager", "onnxruntime")
"""The runtimes a latency budget is measured in: PyTorch eager, or onnxruntime on the CPU."""

ALIGNMENT = 8
"""Ranks that are multiples of this are timed and interpolated apart from the others (see the module docstring)."""

CACHE_ENV = "SMOOTHCOMPRESS_LATENCY_CACHE"
"""Environment variable naming the cache file; ``""`` or ``"off"`` turns the disk cache off."""

Timer = Callable[[nn.Module, ExampleInput], float]
"""``timer(module, example) -> seconds`` of one forward pass (eval mode, no gradient)."""


class LatencyUnreachable(RateUnreachable):
    """A latency budget the eligible layers cannot reach in the runtime: even at their fastest ranks the model keeps
    more of its measured time. The message names the smallest reachable fraction, and ``reachable`` holds it
    (``None`` when the budget is out of reach only together with a rate or FLOPs budget)."""

    def __init__(self, message: str, reachable: float | None = None):
        super().__init__(message)
        self.reachable = reachable


def check_latency(latency) -> float:
    """``latency`` as a float, checked to be a latency budget: the fraction of the dense time kept, in ``(0, 1]``."""
    if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency):
        raise ConfigError(f"latency must be a number in (0, 1], got {latency!r}")
    if not 0.0 < latency <= 1.0:
        raise ConfigError(
            f"latency must be in (0, 1] (the fraction of the dense model's measured time kept, e.g. 0.5), got {latency}"
        )
    return float(latency)


def check_runtime(runtime) -> str:
    """``runtime`` checked to be one of :data:`RUNTIMES`; onnxruntime must be installed for ``"onnxruntime"``."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(map(repr, RUNTIMES))}")
    if runtime == "onnxruntime":
        require("onnxruntime", "onnx")
    return runtime


@dataclass(frozen=True)
class Timing:
    """How latency is measured.

    Attributes
    ----------
    threads : int, optional
        Threads of the runtime while measuring (torch's intra-op threads, onnxruntime's ``intra_op_num_threads``);
        ``None``: torch's current thread count. Torch's setting is restored afterwards.
    reps, warmup : int
        Timed passes (their median is kept) and untimed passes before them, per measurement.
    cache : path, None or False
        The cache file; ``None``: :func:`cache_path`; ``False``: no disk cache.
    timer : callable, optional
        ``timer(module, example) -> seconds`` instead of measuring (:data:`Timer`); cached only when it has a
        ``name`` attribute.
    """

    threads: int | None = None
    reps: int = 5
    warmup: int = 1
    cache: str | os.PathLike | None | bool = None
    timer: Timer | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)):
            raise ConfigError(f"threads must be a positive int or None, got {self.threads!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be a positive int or None, got {self.threads}")
        if self.reps < 1 or self.warmup < 0:
            raise ConfigError(f"reps must be >= 1 and warmup >= 0, got reps={self.reps}, warmup={self.warmup}")
        if self.timer is not None and not callable(self.timer):
            raise ConfigError(f"timer must be a callable timer(module, example) -> seconds, got {self.timer!r}")


def cache_path(cache: str | os.PathLike | None | bool = None) -> Path | None:
    """The cache file of a :class:`Timing`'s ``cache``: the path given, else :data:`CACHE_ENV`, else
    ``$XDG_CACHE_HOME/smoothcompress/latency.json`` (``~/.cache`` when unset); ``None`` when caching is off."""
    if cache is False:
        return None
    if cache is not None and cache is not True:
        return Path(cache)
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "smoothcompress" / "latency.json"


def rank_grid(max_rank: int) -> list[int]:
    """The ranks measured for a layer whose factorization saves parameters up to ``max_rank``: multiples of 8 up to
    32, of 16 up to 128, of 32 up to 256 and of 64 beyond, the largest multiple of 8 up to ``max_rank``, and off the
    multiples of 8 the ranks ``2**k - 1`` and the largest such rank up to ``max_rank``. Sorted, all in
    ``[1, max_rank]``."""
    if max_rank < 1:
        return []
    aligned, r = set(), 8
    while r <= max_rank:
        aligned.add(r)
        r += 8 if r < 32 else 16 if r < 128 else 32 if r < 256 else 64
    if max_rank >= 8:
        aligned.add(max_rank - max_rank % 8)
    off = {2**k - 1 for k in range(1, max_rank.bit_length() + 1) if 2**k - 1 <= max_rank}
    off.add(max_rank if max_rank % 8 else max_rank - 1)  # the largest rank off the multiples: no extrapolation
    return sorted(aligned | {r for r in off if r >= 1})


# ------------------------------------------------------------------------------------------------------------
# The table


@dataclass
class LayerTimes:
    """One layer's measured seconds per forward pass (summed over its calls): dense, and factorized at the
    measured ranks, by scheme."""

    dense: float
    points: dict[str, dict[int, float]] = field(default_factory=dict)

    def time(self, scheme: str, rank: int) -> float:
        """Seconds of the layer factorized with ``scheme`` at ``rank``, interpolated (see the module docstring)."""
        pts = self.points.get(scheme)
        if not pts:
            raise ConfigError(f"no measured times of scheme {scheme!r}; measured: {', '.join(self.points) or 'none'}")
        aligned = {r: t for r, t in pts.items() if r % ALIGNMENT == 0}
        off = {r: t for r, t in pts.items() if r % ALIGNMENT != 0}
        use = aligned if (rank % ALIGNMENT == 0 and aligned) or not off else off
        if use is off and rank > max(off):  # past the last rank off the multiples: between the multiples around it
            use = pts
        ranks = sorted(use)
        seconds = np.maximum.accumulate(np.array([use[r] for r in ranks], dtype=float))
        return float(np.interp(rank, ranks, seconds))


@dataclass
class LatencyTable:
    """Measured times of a model's eligible layers and of the whole dense model (see :func:`measure_table`).

    Attributes
    ----------
    layers : dict of str to LayerTimes
        By module name.
    model : float
        Seconds of one forward pass of the whole dense model.
    provenance : dict
        Runtime, device, threads, versions, cache file and key, when the entries were measured.
    """

    layers: dict[str, LayerTimes]
    model: float
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def fixed(self) -> float:
        """Seconds of the model outside its eligible layers: its measured time less the layers' sum, at least 0."""
        return max(0.0, self.model - sum(t.dense for t in self.layers.values()))

    @property
    def dense_total(self) -> float:
        """Seconds of the dense model as the table counts it: the fixed part plus every layer's dense time."""
        return self.fixed + sum(t.dense for t in self.layers.values())

    def time(self, name: str, scheme: str | None, rank: int | None) -> float:
        """Seconds of layer ``name`` dense (``scheme`` ``None``) or factorized with ``scheme`` at ``rank``."""
        lay = self.layers[name]
        return lay.dense if scheme is None or rank is None else lay.time(scheme, rank)

    def plan_time(self, choices: Mapping[str, Any]) -> float:
        """Seconds of the model under ``choices`` (``{layer: obj with .scheme and .rank}``, e.g. a plan's
        ``layers``; layers not named stay dense): the fixed part plus every layer's time."""
        total = self.fixed
        for name, lay in self.layers.items():
            c = choices.get(name)
            total += lay.dense if c is None else self.time(name, c.scheme, c.rank)
        return total


def _environment(runtime: str, timer: Timer | None, threads: int) -> tuple[str, dict]:
    """The part of every cache key that describes where and how the measurements run, and its fields."""
    fields = {"runtime": runtime, "threads": threads, "torch": torch.__version__, "host": platform.node()}
    if timer is not None:
        fields["timer"] = str(getattr(timer, "name", "custom"))
    if runtime == "onnxruntime" and timer is None:
        fields["onnxruntime"] = require("onnxruntime", "onnx").__version__
    return "|".join(f"{k}={v}" for k, v in fields.items()), fields


def _layer_key(module: nn.Module) -> str:
    w = layer_weight(module)
    shape = "x".join(map(str, w.shape))
    bias = getattr(module, "bias", None) is not None
    if is_linear_like(module):
        return f"linear {shape} bias={bias}"
    m = module
    return (
        f"conv2d {shape} k={tuple(m.kernel_size)} s={tuple(m.stride)} p={m.padding} d={tuple(m.dilation)} "
        f"{m.padding_mode} bias={bias}"
    )


@dataclass(frozen=True)
class _Call:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    channels_last: bool

    def describe(self) -> str:
        fmt = " channels_last" if self.channels_last else ""
        return f"{'x'.join(map(str, self.shape))} {str(self.dtype).removeprefix('torch.')} {self.device}{fmt}"

    def tensor(self) -> torch.Tensor:
        x = torch.randn(self.shape, dtype=self.dtype, device=self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _capture_calls(model: nn.Module, modules: Mapping[str, nn.Module], example: ExampleInput) -> dict[str, list[_Call]]:
    """The input of every call of each named module in one forward pass (eval mode, no gradient)."""
    calls: dict[str, list[_Call]] = {name: [] for name in modules}

    def record(name):
        def hook(module, args, kwargs):
            t = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if t is not None:
                cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                calls[name].append(_Call(tuple(int(s) for s in t.shape), t.dtype, t.device, cl))

        return hook

    named = dict(model.named_modules())
    modes = {name: m.training for name, m in named.items()}
    handles = [m.register_forward_pre_hook(record(name), with_kwargs=True) for name, m in modules.items()]
    try:
        model.eval()
        example.run(model)
    finally:
        for h in handles:
            h.remove()
        for name, m in named.items():
            m.training = modes[name]
    return calls


def _factorized(module: nn.Module, scheme: str, rank: int) -> nn.Module:
    """A factorized layer shaped like ``module`` at ``rank`` (random factors), on its device and dtype."""
    w = layer_weight(module)
    fk = {"device": w.device, "dtype": w.dtype}
    bias = getattr(module, "bias", None) is not None
    if is_linear_like(module):
        return FactorizedLinear(w.shape[1], w.shape[0], rank, bias, rank, **fk)
    m = FactorizedConv2d(
        w.shape[1], w.shape[0], module.kernel_size, rank, module.stride, module.padding, module.dilation,
        bias=bias, padding_mode=module.padding_mode, scheme=scheme, full_rank=rank, **fk,
    )  # fmt: skip
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        m = m.to(memory_format=torch.channels_last)
    return m


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Cache:
    """The on-disk cache: ``{"version": 1, "entries": {key: {"seconds": s, "measured": iso time}}}``."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = self._read()
        self.new: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            entries = raw.get("entries", {}) if isinstance(raw, dict) and raw.get("version") == 1 else {}
        except (OSError, ValueError):
            warnings.warn(f"latency cache {self.path} is unreadable; it will be rewritten", stacklevel=4)
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("seconds"), float)}

    def get(self, key: str) -> dict | None:
        return self.new.get(key) or self.entries.get(key)

    def put(self, key: str, seconds: float) -> dict:
        entry = {"seconds": float(seconds), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.new[key] = entry
        return entry

    def save(self) -> None:
        if self.path is None or not self.new:
            return
        merged = {**self._read(), **self.new}  # what other processes wrote meanwhile is kept
        write_json(self.path, {"version": 1, "entries": merged})


def _onnx_session(module: nn.Module, x: torch.Tensor, threads: int):
    """An onnxruntime session of ``module`` alone, exported by the TorchScript exporter on ``x``."""
    ort = require("onnxruntime", "onnx")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, input_names=["input"], output_names=["output"])
    return _session(ort, buf.getvalue(), threads)


def _session(ort, model: bytes | str, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _in_turns(runs: Sequence[Callable[[], object]], reps: int, warmup: int, stat=statistics.median) -> list[float]:
    """``stat`` (median) of the seconds of each callable, all run in turns (``warmup`` untimed rounds, then ``reps``
    timed ones)."""
    for _ in range(warmup):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(reps):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - t0)
    return [stat(t) for t in times]


def _time_variants(
    modules: Sequence[nn.Module], call: _Call, runtime: str, timing: Timing, threads: int
) -> list[float]:
    """Seconds of each module on one random input of ``call``'s shape, timed in turns."""
    x = call.tensor()
    if timing.timer is not None:
        return [float(timing.timer(m, ExampleInput((x,)))) for m in modules]
    if runtime == "eager":
        kw = {"reps": timing.reps, "warmup": timing.warmup, "fastest": True}
        return measure_latency(list(modules), example=ExampleInput((x,)), **kw)
    sessions = [_onnx_session(m, x, threads) for m in modules]
    feed = {"input": x.detach().cpu().contiguous().numpy()}
    return _in_turns([lambda s=s: s.run(None, feed) for s in sessions], timing.reps, timing.warmup, min)


def measure_table(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    example: ExampleInput,
    ranks: Mapping[str, Mapping[str, int]],
    runtime: str = "eager",
    timing: Timing | None = None,
) -> LatencyTable:
    """Measure (or read from the cache) the :class:`LatencyTable` of ``model``'s layers ``modules``.

    Parameters
    ----------
    model : nn.Module
        The dense model; one forward pass on ``example`` gives each layer's input shapes, and the whole model is
        timed once on ``example`` (:func:`measure_models`).
    modules : mapping of str to nn.Module
        The layers to time (Conv2d or Linear-like), by module name in ``model``.
    example : ExampleInput
        The model's input, batch included.
    ranks : mapping of str to mapping of str to int
        ``{layer: {scheme: largest rank}}``: the schemes to time each layer in and the largest rank worth timing;
        the ranks of :func:`rank_grid` are measured.
    runtime : {"eager", "onnxruntime"}
    timing : Timing, optional

    Returns
    -------
    LatencyTable

    Raises
    ------
    ConfigError
        An unknown runtime, or a callable example with onnxruntime (it needs tensors to export).
    MissingExtra
        onnxruntime is not installed.
    """
    timing = timing or Timing()
    if timing.timer is None:
        check_runtime(runtime)
    threads = timing.threads or torch.get_num_threads()
    env_key, env = _environment(runtime, timing.timer, threads)
    path = cache_path(timing.cache) if timing.timer is None or hasattr(timing.timer, "name") else None
    cache = _Cache(path)
    calls = _capture_calls(model, modules, example)
    used: dict[str, dict] = {}
    measured = 0
    layers = {}
    with _threads(threads):
        for name, module in modules.items():
            mkey = _layer_key(module)
            variants = [(None, 0)] + [(s, r) for s, top in ranks.get(name, {}).items() for r in rank_grid(top)]
            seconds = dict.fromkeys(variants, 0.0)
            for call in calls[name]:
                keys = {
                    (s, r): f"{env_key}|{mkey}|{'dense' if s is None else f'{s} r={r}'}|in={call.describe()}"
                    for s, r in variants
                }
                if any(cache.get(k) is None for k in keys.values()):  # a layer's variants are timed together
                    mods = [module if s is None else _factorized(module, s, r) for s, r in variants]
                    for v, t in zip(variants, _time_variants(mods, call, runtime, timing, threads), strict=True):
                        cache.put(keys[v], t)
                    measured += len(variants)
                for v, key in keys.items():
                    used[key] = cache.get(key)
                    seconds[v] += used[key]["seconds"]
            times = LayerTimes(seconds.pop((None, 0)))
            for (s, r), t in seconds.items():
                times.points.setdefault(s, {})[r] = t
            layers[name] = times
        whole = measure_models([model], example, runtime, timing, fastest=True)[0]
    cache.save()
    stamps = sorted(e["measured"] for e in used.values())
    provenance = {
        "runtime": runtime,
        "device": device_name(_device(model)),
        **{k: v for k, v in env.items() if k != "runtime"},
        "input": example.describe(),
        "cache": str(path) if path is not None else None,
        "cache_key": env_key,
        "entries": len(used),
        "measured_now": measured,
        "measured_from": stamps[0] if stamps else None,
        "measured_to": stamps[-1] if stamps else None,
        "reps": timing.reps,
        "warmup": timing.warmup,
    }
    return LatencyTable(layers, whole, provenance)


def _device(model: nn.Module) -> torch.device | None:
    ref = next(iter(model.parameters()), None)
    return None if ref is None else ref.device


def measure_models(
    models: Sequence[nn.Module],
    example: ExampleInput,
    runtime: str = "eager",
    timing: Timing | None = None,
    fastest: bool = False,
) -> list[float]:
    """Seconds of one forward pass of each model on ``example`` in ``runtime``, timed in turns (the median, or with
    ``fastest`` the minimum, of ``timing.reps`` passes after ``timing.warmup`` untimed ones each), with
    ``timing.threads`` threads.

    ``"eager"``: :func:`smoothcompress.accounting.measure_latency`. ``"onnxruntime"``: each model exported by
    :func:`smoothcompress.export_onnx`'s exporter (fixed batch) to a temporary file and run by a CPU session. A
    custom ``timing.timer`` times each model alone.
    """
    timing = timing or Timing()
    threads = timing.threads or torch.get_num_threads()
    stat = min if fastest else statistics.median
    with _threads(threads):
        if timing.timer is not None:
            return [float(timing.timer(m, example)) for m in models]
        if runtime == "eager":
            kw = {"reps": timing.reps, "warmup": timing.warmup, "example": example, "fastest": fastest}
            return measure_latency(list(models), **kw)
        return _onnx_models(models, example, threads, timing, stat)


def _onnx_models(models: Sequence[nn.Module], example: ExampleInput, threads: int, timing: Timing, stat) -> list[float]:
    from smoothcompress.onnxfile import export_float

    ort = require("onnxruntime", "onnx")
    if example.call is not None:
        raise ConfigError("runtime='onnxruntime' exports the model on tensors: pass example as a tensor, tuple or dict")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sessions = []
        for i, m in enumerate(models):
            path = export_float(m, Path(tmp) / f"m{i}.onnx", dynamic_batch=False, example_input=example.inputs())
            sessions.append(_session(ort, str(path), threads))
    values = [t.detach().cpu().contiguous().numpy() for t in example.tensors()]
    feeds = [dict(zip([i.name for i in s.get_inputs()], values, strict=False)) for s in sessions]
    return _in_turns([lambda s=s, f=f: s.run(None, f) for s, f in zip(sessions, feeds, strict=True)],
                     timing.reps, timing.warmup, stat)  # fmt: skip

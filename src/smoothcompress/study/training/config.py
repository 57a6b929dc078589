"""Every setting of a training run in one frozen :class:`TrainConfig`: defaults, TOML, type checks, validation.

A config is built from defaults, then a flat TOML file of ``key = value`` lines, then keyword overrides
(command-line flags) (:meth:`TrainConfig.from_sources`); every value is type-checked (ints are accepted for floats,
lists for tuples) and validated, and a bad key or value raises ``ValueError`` naming it.

The penalty strength is ``weight`` (as in :class:`~smoothcompress.Smoothness`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothcompress.errors import ConfigError
from smoothcompress.extras import require
from smoothcompress.files import atomic_file
from smoothcompress.regularize import Smoothness

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = require("tomli", "train")

tomli_w = require("tomli_w", "train")  # writes config.toml; one line naming the extra when it is missing

__all__ = [
    "TrainConfig",
    "read_toml",
    "write_toml",
    "SCHEDULES",
    "REG_KINDS",
    "DEVICES",
    "RUNTIME_KEYS",
    "NUCLEAR_SCHEDULE",
    "effective_schedule",
    "make_regularizer",
]

SCHEDULES = ("onecycle", "cosine")
REG_KINDS = ("none", "nuclear", "first", "second")
DEVICES = ("cpu", "cuda", "auto")
RUNTIME_KEYS = frozenset({"resume", "out", "data", "device", "bf16", "channels_last", "compile"})
"""Settings that may change between a run and its resume: where and how fast it runs, not what it computes."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, in one place. Each default says why it is the default.

    The defaults train the paper's setting: CIFAR ResNet-18 on CIFAR-10, no penalty (the baseline). Build one
    from a TOML file and command-line flags with :meth:`from_sources`; write it with :meth:`to_toml`.
    :func:`train` reads only the optimisation, penalty and runtime settings; ``dataset``, ``data``, ``model``
    and ``width`` are for :func:`run`.
    """

    # -- what to train
    dataset: str = "cifar10"  # the paper's benchmark; also "cifar100", "digits", or an ImageFolder dir/.tar.gz
    data: str | None = None  # ImageFolder dir/.tar.gz, or the root holding `dataset`; None: default root, download
    model: str = "resnet18"  # the paper's model; smoothcompress.list_models() lists the others
    width: int | None = None  # None: the model's own default width (64 for resnet18, the paper's)
    # -- optimisation
    epochs: int = 30  # a one-cycle schedule gets most of its accuracy in tens of epochs; raise for final numbers
    batch_size: int = 512  # GLOBAL batch (see smoothcompress.study.training); large enough to keep a GPU busy on 32x32
    lr: float = 0.4  # peak lr: 0.1 per 128 images (He et al. 2016), scaled linearly with the batch (Goyal 2017)
    momentum: float = 0.9  # Nesterov momentum 0.9, the standard for CIFAR ResNets
    weight_decay: float = 5e-4  # the standard for CIFAR ResNets; applied to weights only, not to BN or biases
    label_smoothing: float = 0.1  # a cheap, reliable gain for cross-entropy classifiers (Szegedy et al. 2016)
    schedule: str = "onecycle"  # "onecycle" (linear up, linear down) reaches a given accuracy in fewer epochs
    warmup: float = 0.2  # fraction of all steps spent raising the lr; keeps the large peak lr stable early on
    # -- smoothness penalty (smoothcompress.Smoothness)
    reg: str = "none"  # "none" | "nuclear" | "first" | "second"; "none" trains the uncompressed baseline
    weight: float = 0.0  # penalty weight, on weight decay's scale (see Smoothness); must be 0 with reg="none"
    reg_warmup_epochs: float = 0.0  # weight rises linearly over these epochs; 0: full weight from the first step
    reg_delay_epochs: float = 0.0  # weight 0 for these epochs first (features form), then the warm-up ramp
    reg_axes: tuple[str, ...] = ("out", "in")  # difference axes (first/second): the axes that SVD truncates
    reg_p: float = 2.0  # exponent on the differences: 2 = squared (smooth), 1 = total variation
    reg_every: int | None = None  # add the penalty every k-th step (scaled by k); None: NUCLEAR_SCHEDULE or 1
    reg_proximal: bool = False  # "nuclear" only: singular-value soft-thresholding after each step, not a loss
    reg_refresh: int | None = None  # "nuclear": U V^T every k-th step, reused between; None: NUCLEAR_SCHEDULE or 1
    reg_polar: str = "svd"  # "nuclear" only: U V^T by "svd" (exact) or "newton-schulz" (matmuls, inexact)
    reg_scale_free: bool = False  # sum the scale-free roughness ||dW||^2/||W||^2: BatchNorm makes convs scale-free
    reg_exclude: tuple[str, ...] = ()  # layers left unpenalised, e.g. ["<first>", "<last>"] (stem, classifier)
    reg_target_rate: float | None = None  # "nuclear": penalise only what truncation at this rate drops (tail)
    augment: bool | None = None  # None: the dataset's default (crop + flip for CIFAR, none for 8x8 digits)
    # the factorized architecture trained from scratch (a reference for compression without fine-tuning): the
    # layers get the ranks of this ranks file (smoothcompress.rankfile) at `lowrank_rate`, initialised from the
    # truncated SVD of the fresh model's weights (spectral initialisation), and train like any model
    lowrank_ranks: str | None = None  # path of a ranks file; None: the dense architecture
    lowrank_rate: float | None = None  # which of the file's rates; required with lowrank_ranks
    val_fraction: float = 0.0  # > 0: hold out this fraction of train as validation to tune on, not the test set
    val_seed: int = 0  # seed of the validation split, apart from `seed`: runs of all seeds tune on the same images
    # -- reproducibility and runtime
    seed: int = 0  # seeds the model init (in run), the data order, the augmentation and every RNG
    device: str = "auto"  # "auto": CUDA when available, else CPU
    # bf16 pays on CPUs with AVX512-BF16 (measured by benchmarks/bench_precision.py): the CPU presets turn it on.
    # Results differ from float32's, so the CPU default stays off.
    bf16: bool | None = None  # None: on for CUDA (Tensor Cores), off on CPU
    channels_last: bool | None = None  # None: on; the fast conv layout on CUDA (cuDNN) and CPU (oneDNN)
    compile: bool = False  # torch.compile: a long compile up front, worth it only for long GPU runs
    out: str = "runs/train"  # run folder: metrics.jsonl, config.toml, checkpoint.pt, model.safetensors
    resume: bool = False  # continue from OUT/checkpoint.pt; without it an existing checkpoint is an error

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        _validate(self)

    # -- conversions

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys are: {', '.join(sorted(names))}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a flat TOML file of ``key = value`` lines (any subset of the fields)."""
        return cls.from_dict(read_toml(path))

    @classmethod
    def from_sources(cls, toml_path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
        """Defaults, then the TOML file, then ``overrides`` (command-line flags): later sources win.

        Parameters
        ----------
        toml_path : path, optional
            A TOML file of config keys. Default: with ``resume=True`` and an ``out`` folder holding a
            ``config.toml`` (a run to continue), that file; else none.
        **overrides
            Config keys. ``None`` values are ignored, so a CLI can pass every flag with ``None`` for "not given".
        """
        out = overrides.get("out")
        if toml_path is None and overrides.get("resume") and out and (Path(out) / "config.toml").exists():
            toml_path = Path(out) / "config.toml"
        values = read_toml(toml_path) if toml_path is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (tuples as lists), the form stored in TOML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write atomically as TOML. ``None`` values (meaning "automatic") are omitted, as TOML has no null."""
        return write_toml(
            path, {k: v for k, v in self.to_dict().items() if v is not None}, "smoothcompress train config"
        )


def write_toml(path: str | os.PathLike, table: dict[str, Any], comment: str) -> Path:
    """Write ``table`` (TOML values only: no ``None``) atomically as TOML, below the line ``# comment``."""
    text = f"# {comment}\n" + tomli_w.dumps(table)
    with atomic_file(path) as f:
        f.write(text.encode())
    return Path(path)


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a TOML file; ``ValueError`` when it is missing or not valid TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


NUCLEAR_SCHEDULE: dict[str, int] = {"reg_every": 10}
"""The trainer's default schedule of the nuclear penalty (a loss term through the exact SVD). It is the cheapest
schedule whose dense and SVD accuracies at 70% and 80% fewer parameters are no worse than the every-step SVD's
beyond the seed spread; its measurements: ``benchmarks/results/nuclear_schedule.json`` (accuracies) and
``benchmarks/results/regularize.json`` (step cost)."""


def make_regularizer(config: TrainConfig) -> Smoothness | None:
    """The :class:`~smoothcompress.Smoothness` penalty named by the config, or ``None`` for ``reg="none"``.

    Raises ValueError (one line) for penalty settings that do not go together.
    """
    if config.reg == "none":
        return None
    schedule = effective_schedule(config)
    return Smoothness(
        config.reg,
        config.weight,
        axes=config.reg_axes,
        p=config.reg_p,
        exclude=config.reg_exclude or None,
        every=schedule["reg_every"],
        proximal=config.reg_proximal,
        refresh=schedule["reg_refresh"],
        polar=config.reg_polar,
        scale_free=config.reg_scale_free,
        target_rate=config.reg_target_rate,
    )


def effective_schedule(values: Mapping[str, Any] | TrainConfig) -> dict[str, int]:
    """The ``reg_every`` and ``reg_refresh`` a run trains with: the values given, and for those left ``None``,
    :data:`NUCLEAR_SCHEDULE` when both are ``None`` and the penalty is the plain nuclear loss term (not proximal,
    exact polar factor), else 1. The config keeps ``None``: a changed default reaches configs that never chose.

    Parameters
    ----------
    values : TrainConfig or mapping
        A config, or its stored dict (``config.toml`` or a checkpoint's); missing keys count as ``None``.
    """
    v = values.to_dict() if isinstance(values, TrainConfig) else values
    unset = [k for k in ("reg_every", "reg_refresh") if v.get(k) is None]
    plain_nuclear = v.get("reg") == "nuclear" and not v.get("reg_proximal") and v.get("reg_polar", "svd") == "svd"
    schedule = NUCLEAR_SCHEDULE if plain_nuclear and len(unset) == 2 else {}
    return {k: int(v[k]) if k not in unset else schedule.get(k, 1) for k in ("reg_every", "reg_refresh")}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type hint, converting int -> float and list -> tuple."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    ok = False
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        ok = isinstance(value, str)
    elif typing.get_origin(hint) is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        want = _TYPE_WORDS.get(hint, "a list of strings")
        raise ConfigError(f"config key {name!r} must be {want}, got {value!r} ({type(value).__name__})")
    return value


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for key, choices in (("schedule", SCHEDULES), ("reg", REG_KINDS), ("device", DEVICES)):
        need(getattr(c, key) in choices, f"{key} must be one of {', '.join(choices)}; got {getattr(c, key)!r}")
    need(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    need(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    need(math.isfinite(c.lr) and c.lr > 0, f"lr must be a finite number > 0, got {c.lr}")
    need(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    need(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    need(0 <= c.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    need(0 <= c.warmup < 1, f"warmup (a fraction of all steps) must be in [0, 1), got {c.warmup}")
    need(math.isfinite(c.weight) and c.weight >= 0, f"weight must be a finite number >= 0, got {c.weight}")
    no_effect = f"weight={c.weight} has no effect with reg='none'; choose a reg kind or weight=0"
    need(c.reg != "none" or c.weight == 0, no_effect)
    need(c.reg_warmup_epochs >= 0, f"reg_warmup_epochs must be >= 0, got {c.reg_warmup_epochs}")
    need(
        0 <= c.reg_delay_epochs < c.epochs,
        f"reg_delay_epochs must be in [0, epochs={c.epochs}) (the penalty must start), got {c.reg_delay_epochs}",
    )
    make_regularizer(c)  # the penalty's own checks (axes, p, every, refresh, polar, target rate), one message each
    need(
        (c.lowrank_ranks is None) == (c.lowrank_rate is None),
        "lowrank_ranks (a ranks file) and lowrank_rate (one of its rates) go together; give both or neither",
    )
    need(
        c.lowrank_rate is None or 0 < c.lowrank_rate < 1,
        f"lowrank_rate must be a fraction of parameters removed in (0, 1), got {c.lowrank_rate}",
    )
    need(0 <= c.val_fraction < 1, f"val_fraction must be in [0, 1), got {c.val_fraction}")
    need(c.width is None or c.width >= 1, f"width must be >= 1, got {c.width}")

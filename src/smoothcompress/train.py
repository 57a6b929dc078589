"""Trainer: SGD with Nesterov momentum plus a smoothness penalty; checkpoints, exact resume, DDP.

Three entry points:

* :func:`train` trains any ``nn.Module`` on a :class:`~smoothcompress.data.Dataset` with a :class:`TrainConfig`.
* :func:`run` builds the dataset, model and penalty named in a :class:`TrainConfig` and calls :func:`train`
  (this is ``smoothcompress train``).
* :func:`evaluate` is the top-1 accuracy of a model on a dataset's test split or on a loader.

A run folder ``OUT`` holds ``metrics.jsonl`` (one JSON object per epoch, key ``"epoch"``), ``config.toml`` (the
resolved config), ``checkpoint.pt`` (rewritten atomically after every epoch) and, at the end,
``model.safetensors`` (loadable with :func:`smoothcompress.load`).

Reproducibility and resume
--------------------------
Every source of randomness is seeded from ``config.seed``: the loader's shuffle and augmentation depend only on
``(seed, epoch)``, and the torch, NumPy and Python RNG states are saved in each checkpoint. A run killed at any
point (SIGKILL mid-epoch included) and restarted with ``resume=True`` reloads the last checkpoint and replays the
interrupted epoch from its start; on CPU it ends with bit-for-bit the weights of the uninterrupted run. On GPU,
cuDNN autotuning and atomics make runs close but not bit-identical.

Distributed training and the global batch
-----------------------------------------
Under ``torchrun --nproc_per_node=N ...`` (which sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``),
:func:`train` joins a process group (gloo on CPU, NCCL on CUDA, one GPU per process: ``cuda:LOCAL_RANK``) and
wraps the model in ``DistributedDataParallel``.

* ``batch_size`` is the **global** batch. Each step, each of the N processes takes ``batch_size // N`` samples
  (N must divide ``batch_size``) from its shard of the epoch's shuffled order, and DDP averages the gradients.
  So a step sees ``batch_size`` samples whatever N is, an epoch has the same number of steps, and ``lr``,
  the schedule and the penalty weight mean the same thing as in a one-process run. For a model without
  BatchNorm, N processes follow the one-process run up to floating-point summation order; with BatchNorm the
  batch statistics are computed per process, over ``batch_size // N`` samples.
* The reported metrics are global: loss, training accuracy and penalty are all-reduced over the processes
  (every training sample counts once), and the test accuracy is computed on disjoint shards of the test set and
  summed, so it is the accuracy on the whole test set. ``images_per_s`` counts the images of all processes.
* Only rank 0 writes files. BatchNorm running statistics are rank 0's (DDP broadcasts them every step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import json
import logging
import math
import os
import random
import sys
import time
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from smoothcompress import io as sc_io
from smoothcompress import models
from smoothcompress.data import Dataset, Loader, load_dataset, split_validation
from smoothcompress.io import CheckpointError
from smoothcompress.provenance import append_jsonl, atomic_file
from smoothcompress.regularize import Smoothness

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "train",
    "run",
    "evaluate",
    "load_dataset_for",
    "lr_factor",
    "penalty_ramp",
    "load_checkpoint",
    "CHECKPOINT_NAME",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the checkpoint inside a run folder."""

SCHEDULES = ("onecycle", "cosine")
REG_KINDS = ("none", "nuclear", "first", "second")
DEVICES = ("cpu", "cuda", "auto")
EVAL_BATCH = 1024
_CHECKPOINT_FORMAT = "smoothcompress.checkpoint/1"
# Settings that may change between a run and its resume: where and how fast it runs, not what it computes.
_RUNTIME_KEYS = frozenset({"resume", "out", "data", "device", "bf16", "channels_last", "compile"})


class TrainingDiverged(RuntimeError):
    """The training loss (or the penalty) became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------------------
# Configuration


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
    batch_size: int = 512  # GLOBAL batch (see the module docstring); large enough to keep a GPU busy on 32x32
    lr: float = 0.4  # peak lr: 0.1 per 128 images (He et al. 2016), scaled linearly with the batch (Goyal 2017)
    momentum: float = 0.9  # Nesterov momentum 0.9, the standard for CIFAR ResNets
    weight_decay: float = 5e-4  # the standard for CIFAR ResNets; applied to weights only, not to BN or biases
    label_smoothing: float = 0.1  # a cheap, reliable gain for cross-entropy classifiers (Szegedy et al. 2016)
    schedule: str = "onecycle"  # "onecycle" (linear up, linear down) reaches a given accuracy in fewer epochs
    warmup: float = 0.2  # fraction of all steps spent raising the lr; keeps the large peak lr stable early on
    # -- smoothness penalty (smoothcompress.Smoothness)
    reg: str = "none"  # "none" | "nuclear" | "first" | "second"; "none" trains the uncompressed baseline
    lam: float = 0.0  # penalty weight, on weight decay's scale (see Smoothness); must be 0 with reg="none"
    reg_warmup_epochs: float = 0.0  # weight rises linearly over these epochs; 0: full weight from the first step
    reg_axes: tuple[str, ...] = ("out", "in")  # difference axes (first/second): the axes that SVD truncates
    reg_p: float = 2.0  # exponent on the differences: 2 = squared (smooth), 1 = total variation
    reg_every: int = 1  # add the penalty every k-th step (scaled by k): k > 1 makes "nuclear" cheaper
    reg_proximal: bool = False  # "nuclear" only: singular-value soft-thresholding after each step, not a loss
    reg_exclude: tuple[str, ...] = ()  # layers left unpenalised, e.g. ["<first>", "<last>"] (stem, classifier)
    augment: bool | None = None  # None: the dataset's default (crop + flip for CIFAR, none for 8x8 digits)
    val_fraction: float = 0.0  # > 0: hold out this fraction of train as validation to tune on, not the test set
    val_seed: int = 0  # seed of the validation split, apart from `seed`: runs of all seeds tune on the same images
    # -- reproducibility and runtime
    seed: int = 0  # seeds the model init (in run), the data order, the augmentation and every RNG
    device: str = "auto"  # "auto": CUDA when available, else CPU
    bf16: bool | None = None  # None: on for CUDA (Tensor Cores), off on CPU (slow there, and not bit-exact)
    channels_last: bool | None = None  # None: on; faster convs on CUDA (cuDNN) and CPU (oneDNN, 1.2-1.5x measured)
    compile: bool = False  # torch.compile: ~1 min of compile time, worth it only for long GPU runs
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
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; valid keys are: {', '.join(sorted(names))}")
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
            A TOML file of config keys.
        **overrides
            Config keys. ``None`` values are ignored, so a CLI can pass every flag with ``None`` for "not given".
        """
        values = read_toml(toml_path) if toml_path is not None else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (tuples as lists), the form stored in TOML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_toml(self, path: str | os.PathLike) -> Path:
        """Write atomically as TOML. ``None`` values (meaning "automatic") are omitted, as TOML has no null."""
        text = "# smoothcompress train config\n" + tomli_w.dumps(
            {k: v for k, v in self.to_dict().items() if v is not None}
        )
        with atomic_file(path) as f:
            f.write(text.encode())
        return Path(path)


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


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
        raise ValueError(f"config key {name!r} must be {want}, got {value!r} ({type(value).__name__})")
    return value


def _validate(c: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    for key, choices in (("schedule", SCHEDULES), ("reg", REG_KINDS), ("device", DEVICES)):
        need(getattr(c, key) in choices, f"{key} must be one of {', '.join(choices)}; got {getattr(c, key)!r}")
    need(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    need(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    need(math.isfinite(c.lr) and c.lr > 0, f"lr must be a finite number > 0, got {c.lr}")
    need(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    need(c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}")
    need(0 <= c.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    need(0 <= c.warmup < 1, f"warmup (a fraction of all steps) must be in [0, 1), got {c.warmup}")
    need(math.isfinite(c.lam) and c.lam >= 0, f"lam must be a finite number >= 0, got {c.lam}")
    need(c.reg != "none" or c.lam == 0, f"lam={c.lam} has no effect with reg='none'; choose a reg kind or lam=0")
    need(c.reg_warmup_epochs >= 0, f"reg_warmup_epochs must be >= 0, got {c.reg_warmup_epochs}")
    need(0 <= c.val_fraction < 1, f"val_fraction must be in [0, 1), got {c.val_fraction}")
    need(c.width is None or c.width >= 1, f"width must be >= 1, got {c.width}")


# ---------------------------------------------------------------------------------------------------------
# Schedules and optimiser (pure functions of the step: nothing to checkpoint beyond the step counter)


def lr_factor(step: int, total_steps: int, schedule: str = "onecycle", warmup: float = 0.2) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total_steps``.

    Both schedules rise linearly to 1 over the first ``round(warmup * total_steps)`` steps (the first step
    uses ``1 / warmup_steps``), then fall to 0 at ``total_steps``: linearly for ``"onecycle"`` (Smith & Topin
    2019, as in airbench), along a half cosine for ``"cosine"`` (Loshchilov & Hutter 2017).
    """
    warm = round(warmup * total_steps)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total_steps - warm)
    if schedule == "onecycle":
        return max(0.0, 1.0 - t)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")


def penalty_ramp(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """Fraction of the full penalty weight at optimizer step ``step`` (0-based): linear over ``warmup_epochs``."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on weights (ndim >= 2) only, not on BatchNorm or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def make_regularizer(config: TrainConfig) -> Smoothness | None:
    """The :class:`~smoothcompress.Smoothness` penalty named by the config, or ``None`` for ``reg="none"``."""
    if config.reg == "none":
        return None
    return Smoothness(
        config.reg,
        config.lam,
        axes=config.reg_axes,
        p=config.reg_p,
        exclude=config.reg_exclude or None,
        every=config.reg_every,
        proximal=config.reg_proximal,
    )


# ---------------------------------------------------------------------------------------------------------
# Devices, processes, RNG


@dataclass(frozen=True)
class _Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        return _Dist(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ValueError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (they are set by torchrun)") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` -> a torch device; under torchrun, CUDA process k uses ``cuda:k``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device='cuda' but PyTorch sees no CUDA GPU (torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")


@contextlib.contextmanager
def _process_group(ctx: _Dist, device: torch.device) -> Iterator[None]:
    """Join the torchrun process group for the duration (if there is one and nobody joined it yet)."""
    owner = ctx.active and not dist.is_initialized()
    if owner:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        if owner:
            dist.barrier()
    finally:
        if owner:
            # Free whatever still references the group (a DDP reducer in a reference cycle) while the interpreter
            # is alive: gloo's threads torn down at interpreter exit abort the process (SIGABRT).
            gc.collect()
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), np_gauss],
        "python": [py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state.tolist()), py_gauss))


# ---------------------------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, metrics


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the previous checkpoint or the new one, never a partial file.
    """
    with atomic_file(path) as f:
        torch.save({"format": _CHECKPOINT_FORMAT, **state}, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` with ``torch.load(weights_only=True)`` (no code execution).

    Returns
    -------
    dict
        Keys ``epoch`` (epochs completed), ``model``, ``optimizer``, ``scheduler``, ``regularizer``, ``rng``,
        ``config`` (a plain dict) and ``history`` (the metrics rows so far).

    Raises
    ------
    CheckpointError
        If the file is truncated, corrupt, or not a smoothcompress checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt files fail in many ways (zip, pickle, EOF, storage errors): all mean the same
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Delete it to start the run over, or point to another run folder."
        ) from None
    required = {"epoch", "model", "optimizer", "scheduler", "rng", "config", "history"}
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT or required - set(state):
        raise CheckpointError(f"{path} is not a smoothcompress training checkpoint ({_CHECKPOINT_FORMAT})")
    return state


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())


def check_same_settings(saved: dict[str, Any], config: TrainConfig, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming every training setting (runtime keys aside) where ``config`` differs from ``saved``.

    ``saved`` is the config dict stored with a run (checkpoint or ``config.toml`` at ``path``); continuing or
    reusing that run under other settings would silently mix two experiments.
    """
    now = config.to_dict()
    changed = [k for k in now if k not in _RUNTIME_KEYS and saved.get(k) != now[k]]
    if changed:
        diff = "; ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(
            f"{path} was written with different settings ({diff}). Use the run's own config "
            f"({Path(path).parent / 'config.toml'}) or a new out folder."
        )


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def _to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


@torch.no_grad()
def _count_correct(
    model: nn.Module, batches: Iterable, device: torch.device, bf16: bool, channels_last: bool
) -> torch.Tensor:
    """``[correct, total]`` (float64, on ``device``) over ``batches`` of ``(x (B, C, H, W), y (B,))``."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for x, y in batches:
            x, y = _to_input(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            counts[0] += (logits.argmax(1) == y).sum()
            counts[1] += y.shape[0]
    finally:
        model.train(was_training)
    return counts


def _test_loader(dataset: Dataset, device: torch.device, ctx: _Dist = _Dist(), batch_size: int = EVAL_BATCH):
    """This process's shard ``rank::world_size`` of the test split, unaugmented, in order."""
    return Loader(
        dataset.x_test,
        dataset.y_test,
        batch_size,
        train=False,
        mean=dataset.mean,
        std=dataset.std,
        device=device,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


def evaluate(
    model: nn.Module,
    data: Dataset | Iterable,
    *,
    device: str | torch.device | None = None,
    batch_size: int = EVAL_BATCH,
    bf16: bool = False,
    channels_last: bool | None = None,
) -> float:
    """Top-1 accuracy of ``model``, a fraction in [0, 1].

    Parameters
    ----------
    model : nn.Module
        Maps ``(B, C, H, W)`` float inputs to ``(B, num_classes)`` logits. Evaluated in eval mode; its
        train/eval mode is restored afterwards.
    data : Dataset or iterable of (x, y)
        A :class:`~smoothcompress.data.Dataset` (its test split is used, normalised with its mean and std),
        or a :class:`~smoothcompress.data.Loader` / any iterable of ``(x (B, C, H, W) float, y (B,) int64)``.
    device : str or torch.device, optional
        Where to run (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...); the model is moved there. Default:
        where the model's parameters already are.
    batch_size : int
        Batch size when ``data`` is a Dataset.
    bf16 : bool
        Run the forward pass under bfloat16 autocast (faster on GPU, slightly different numbers).
    channels_last : bool, optional
        Run the convs in channels_last memory format, 1.5-1.9x faster on CPU as well as GPU; the model's weights
        are converted for the call and converted back afterwards. ``None``: when the model has a Conv2d.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if channels_last is None:
        channels_last = bool(convs)
    convert = channels_last and any(not m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        return _accuracy(model, data, device, batch_size, bf16, channels_last)
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


def _accuracy(model, data, device, batch_size: int, bf16: bool, channels_last: bool) -> float:
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    else:
        device = resolve_device(device) if device in DEVICES else torch.device(device)
        model.to(device)
    batches = _test_loader(data, device, batch_size=batch_size) if isinstance(data, Dataset) else data
    correct, total = _count_correct(model, batches, device, bf16, channels_last).tolist()
    if total == 0:
        raise ValueError("evaluate() got no samples")
    return correct / total


# ---------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : nn.Module
        The trained model (the module passed in, trained in place; not wrapped by DDP or torch.compile).
    history : list of dict
        One row per epoch, the same objects as the lines of ``metrics.jsonl`` (earlier epochs of a resumed run
        included).
    test_acc : float
        Final top-1 accuracy on the test split.
    val_acc : float or None
        Final accuracy on the validation split when ``val_fraction > 0``.
    wall_time : float
        Seconds spent in this call (a resumed run counts only its own part).
    resumed_from : int or None
        The epoch of the checkpoint this run continued from.
    out_dir : Path or None
        The run folder.
    config : TrainConfig
        The resolved config (device, bf16 and channels_last filled in).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    test_acc: float
    val_acc: float | None
    wall_time: float
    resumed_from: int | None
    out_dir: Path | None
    config: TrainConfig


@dataclass
class _Run:
    """The moving parts of one training run, passed between the step functions."""

    config: TrainConfig
    ctx: _Dist
    device: torch.device
    raw: nn.Module  # the model itself
    net: nn.Module  # what the forward pass calls: raw, or raw wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reg: Smoothness | None
    lam: float  # the penalty's full weight (after warm-up)
    train_loader: Loader
    eval_loader: Loader
    eval_key: str  # "test_acc", or "val_acc" with a validation split
    steps: int  # optimizer steps per epoch
    bf16: bool
    channels_last: bool
    ckpt_path: Path | None  # None: no files (no out_dir)
    writes: bool  # this process writes files (rank 0 with an out_dir)
    progress: bool  # show a progress bar


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    regularizer: Smoothness | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with SGD (Nesterov), a one-cycle or cosine schedule and a penalty.

    Parameters
    ----------
    model : nn.Module
        Any classifier mapping ``(B, C, H, W)`` float inputs to ``(B, num_classes)`` logits. Trained in place
        and moved to the config's device.
    dataset : Dataset
        From :func:`smoothcompress.data.load_dataset` (uint8 images, labels, mean and std).
    config : TrainConfig, optional
        Hyperparameters; default ``TrainConfig()``. ``dataset``, ``data``, ``model`` and ``width`` are ignored
        here (they are :func:`run`'s).
    out_dir : path, optional
        Run folder for ``metrics.jsonl``, ``config.toml``, ``checkpoint.pt`` and ``model.safetensors``. With
        ``None`` nothing is written (and nothing can be resumed).
    regularizer : Smoothness, optional
        A penalty to use instead of the one the config describes; its ``weight`` at the call is the full
        weight that ``reg_warmup_epochs`` ramps up to.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingDiverged
        When the loss or penalty becomes NaN or infinite. The last good checkpoint is kept.
    CheckpointError
        When resuming from a corrupt checkpoint or one of a different model.
    ValueError
        On a bad config, an existing checkpoint without ``resume=True``, or a resume with changed settings.
    """
    start = time.perf_counter()
    config = config if config is not None else TrainConfig()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"dataset must be a smoothcompress Dataset (from smoothcompress.load_dataset), got {type(dataset).__name__}"
        )
    ctx = _dist_from_env()
    if config.batch_size % ctx.world_size:  # before joining the group: fail fast, do not wait for the peers
        raise ValueError(
            f"batch_size={config.batch_size} is the global batch and must be divisible by the "
            f"{ctx.world_size} processes"
        )
    device = resolve_device(config.device, ctx.local_rank)
    with _process_group(ctx, device):
        ctx = _dist_from_env()
        run_ = _setup(model, dataset, config, out_dir, regularizer, ctx, device)
        try:
            history, resumed_from = _restore_or_start(run_)
            for epoch in range(len(history), run_.config.epochs):
                history.append(_train_epoch(run_, epoch, history))
            return _finish(run_, dataset, history, resumed_from, start)
        finally:
            run_.net = None  # drop the DDP wrapper (it holds the process group) before the group is destroyed


def _setup(model, dataset, config, out_dir, regularizer, ctx, device) -> _Run:
    on_cuda = device.type == "cuda"
    bf16 = on_cuda if config.bf16 is None else config.bf16
    channels_last = True if config.channels_last is None else config.channels_last
    config = dataclasses.replace(config, device=device.type, bf16=bf16, channels_last=channels_last)
    if out_dir is not None:
        config = dataclasses.replace(config, out=os.fspath(out_dir))
    if on_cuda:
        torch.backends.cudnn.benchmark = True

    eval_key = "test_acc"
    if config.val_fraction > 0:  # from here on, the "test" split is the held-out validation split
        dataset, eval_key = split_validation(dataset, config.val_fraction, seed=config.val_seed), "val_acc"
    augment = dataset.augment if config.augment is None else config.augment
    if len(dataset.y_train) < config.batch_size:
        raise ValueError(
            f"the training set ({len(dataset.y_train)} samples) is smaller than one batch "
            f"(batch_size={config.batch_size}); lower batch_size"
        )
    train_loader = Loader(
        dataset.x_train,
        dataset.y_train,
        config.batch_size // ctx.world_size,
        train=True,
        mean=dataset.mean,
        std=dataset.std,
        augment=augment,
        seed=config.seed,
        device=device,
        drop_last=True,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    steps = len(train_loader)

    raw = model.to(device)
    if channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(raw, config)
    total = steps * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, config.schedule, config.warmup)
    )
    reg = regularizer if regularizer is not None else make_regularizer(config)
    net = raw
    if ctx.active:
        net = DistributedDataParallel(raw, device_ids=[device.index] if on_cuda else None)
    if config.compile:
        net = torch.compile(net)
    out = Path(out_dir) if out_dir is not None else None
    return _Run(
        config=config,
        ctx=ctx,
        device=device,
        raw=raw,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        reg=reg,
        lam=float(reg.weight) if reg is not None else 0.0,
        train_loader=train_loader,
        eval_loader=_test_loader(dataset, device, ctx),
        eval_key=eval_key,
        steps=steps,
        bf16=bf16,
        channels_last=channels_last,
        ckpt_path=out / CHECKPOINT_NAME if out is not None else None,
        writes=out is not None and ctx.is_main,
        progress=ctx.is_main and sys.stderr.isatty(),
    )


def _restore_or_start(r: _Run) -> tuple[list[dict[str, Any]], int | None]:
    """Load the checkpoint (``resume``) or seed a fresh run; write config.toml and the metrics so far."""
    history: list[dict[str, Any]] = []
    resumed_from = None
    if r.ckpt_path is not None and r.ckpt_path.exists():
        if not r.config.resume:
            raise ValueError(
                f"{r.ckpt_path} already exists: pass resume=True (--resume) to continue that run, "
                "or choose another out folder"
            )
        state = load_checkpoint(r.ckpt_path)  # on the CPU; load_state_dict copies to the model's device
        check_same_settings(state["config"], r.config, r.ckpt_path)
        try:
            r.raw.load_state_dict(state["model"])
            r.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{r.ckpt_path} does not fit this model: {str(e).splitlines()[0]}") from None
        r.scheduler.load_state_dict(state["scheduler"])
        if r.reg is not None and state.get("regularizer"):
            r.reg.load_state_dict(state["regularizer"])
        _set_rng_state(state["rng"])
        history, resumed_from = list(state["history"]), int(state["epoch"])
        log.info("resumed from %s at epoch %d", r.ckpt_path, resumed_from)
    else:
        seed_everything(r.config.seed)
    if r.writes:
        r.config.to_toml(r.ckpt_path.parent / "config.toml")
        _write_jsonl(r.ckpt_path.parent / "metrics.jsonl", history)  # drops rows of epochs not checkpointed
    return history, resumed_from


def _global_sum(t: torch.Tensor, ctx: _Dist) -> list[float]:
    """Sum a small stats tensor over all processes and bring it to the host (one sync)."""
    if ctx.active:
        t = t.clone()
        dist.all_reduce(t)
    return t.tolist()


def _diverged(r: _Run, epoch: int, step: int, loss: float, penalty: float) -> TrainingDiverged:
    kept = (
        f"The last good checkpoint (epoch {epoch}) is kept at {r.ckpt_path}."
        if r.ckpt_path is not None and r.ckpt_path.exists()
        else "No checkpoint had been written yet."
    )
    pen = f", the penalty term {penalty:g} (weight {r.lam:g})" if r.reg is not None else ""
    return TrainingDiverged(
        f"training diverged in epoch {epoch + 1} by step {step + 1}: the mean loss is {loss:g}{pen}. "
        f"Likely causes: the penalty weight is too large (lam={r.lam:g}; try it 10x smaller, or ramp it up with "
        f"reg_warmup_epochs), or the learning rate is too high (lr={r.config.lr:g}; try it 2-10x smaller). {kept}"
    )


def _train_epoch(r: _Run, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """One pass over the training set, then evaluation, checkpoint and metrics row."""
    cfg, device = r.config, r.device
    r.train_loader.set_epoch(epoch)
    r.net.train()
    # Running sums stay on the device (no host sync per step): loss * batch, correct predictions, penalty.
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    seen, lr = 0, cfg.lr
    sync_every = max(1, r.steps // 10)  # ~10 host syncs per epoch: progress bar and NaN check
    bar = tqdm(total=r.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not r.progress)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(r.train_loader):
        step = epoch * r.steps + i
        x = _to_input(x, r.channels_last)
        if r.reg is not None:
            # The penalty is built before the forward pass, so that autograd runs its backward after the
            # network's rather than first, holding its gradients through the whole network backward: the
            # ResNet-18 step with "first" costs 1.046x instead of 1.090x on CPU (benchmarks/bench_regularize.py).
            r.reg.weight = r.lam * penalty_ramp(step, r.steps, cfg.reg_warmup_epochs)
            pen = r.reg(r.raw)
            stats[2] += pen.detach()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=r.bf16):
            logits = r.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        total = loss if r.reg is None else loss + pen
        r.optimizer.zero_grad(set_to_none=True)
        total.backward()
        lr = r.optimizer.param_groups[0]["lr"]
        r.optimizer.step()
        r.scheduler.step()
        if r.reg is not None:
            r.reg.after_step(r.raw, lr)
        stats[0] += loss.detach() * y.shape[0]
        stats[1] += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
        if (i + 1) % sync_every == 0 or i + 1 == r.steps:
            loss_sum, correct, pen_sum = _global_sum(stats, r.ctx)
            n = seen * r.ctx.world_size
            if not (math.isfinite(loss_sum) and math.isfinite(pen_sum)):
                bar.close()
                raise _diverged(r, epoch, i, loss_sum / n, pen_sum / (i + 1) / r.ctx.world_size)
            rate = n / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}", img_s=f"{rate:.0f}")
            bar.update(i + 1 - bar.n)
    seconds = time.perf_counter() - t0
    bar.close()

    t1 = time.perf_counter()
    if r.ctx.active:  # evaluate every shard with rank 0's BatchNorm statistics, the ones that get saved
        for buffer in r.raw.buffers():
            dist.broadcast(buffer, src=0)
    correct_eval, total_eval = _global_sum(_count_correct(r.raw, r.eval_loader, device, r.bf16, r.channels_last), r.ctx)
    n = seen * r.ctx.world_size
    row = {
        "epoch": epoch + 1,
        "loss": loss_sum / n,
        "train_acc": correct / n,
        r.eval_key: correct_eval / total_eval,
        "penalty": pen_sum / r.steps / r.ctx.world_size,
        "reg_weight": r.reg.weight if r.reg is not None else 0.0,
        "lr": lr,
        "images_per_s": n / seconds,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
    }
    if r.writes:
        save_checkpoint(r.ckpt_path, _checkpoint_state(r, epoch + 1, [*history, row]))
        append_jsonl(r.ckpt_path.parent / "metrics.jsonl", row)
    log.info(
        "epoch %d/%d  loss %.4f  train_acc %.4f  %s %.4f  %.0f img/s",
        epoch + 1, cfg.epochs, row["loss"], row["train_acc"], r.eval_key, row[r.eval_key], row["images_per_s"],
    )  # fmt: skip
    return row


def _checkpoint_state(r: _Run, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model": r.raw.state_dict(),
        "optimizer": r.optimizer.state_dict(),
        "scheduler": r.scheduler.state_dict(),
        "regularizer": r.reg.state_dict() if r.reg is not None and hasattr(r.reg, "state_dict") else None,
        "rng": _rng_state(),
        "config": r.config.to_dict(),
        "history": history,
    }


def _finish(r: _Run, dataset: Dataset, history, resumed_from, start: float) -> TrainResult:
    """Final accuracies, ``model.safetensors``, and the result."""
    r.raw.to(memory_format=torch.contiguous_format)
    val_acc = history[-1]["val_acc"] if r.eval_key == "val_acc" else None
    if r.eval_key == "test_acc":
        test_acc = history[-1]["test_acc"]
    else:
        counts = _count_correct(r.raw, _test_loader(dataset, r.device, r.ctx), r.device, r.bf16, False)
        correct, total = _global_sum(counts, r.ctx)
        test_acc = correct / total
    if r.writes:
        sc_io.save(r.raw, r.ckpt_path.parent / "model.safetensors")
    return TrainResult(
        model=r.raw,
        history=history,
        test_acc=test_acc,
        val_acc=val_acc,
        wall_time=time.perf_counter() - start,
        resumed_from=resumed_from,
        out_dir=r.ckpt_path.parent if r.ckpt_path is not None else None,
        config=r.config,
    )


# ---------------------------------------------------------------------------------------------------------
# run(config): everything from the config alone


def _model_kwargs(config: TrainConfig, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """``width`` plus, when the data's shape differs from the model's default, ``in_channels``/``in_features``."""
    kwargs: dict[str, Any] = {} if config.width is None else {"width": config.width}
    if tuple(input_shape) != tuple(models.model_input_shape(config.model)):
        accepted = inspect.signature(models._REGISTRY[config.model]).parameters
        if "in_channels" in accepted:
            kwargs["in_channels"] = int(input_shape[0])
        elif "in_features" in accepted:
            kwargs["in_features"] = int(np.prod(input_shape))
    return kwargs


def load_dataset_for(config: TrainConfig) -> Dataset:
    """The dataset a config names: ``dataset`` from ``data``.

    ``data`` is either an ImageFolder source (a file such as ``cifar10-jpeg.tar.gz``, or a directory with
    ``train/`` and ``test/`` folders), loaded as is, or the data root under which ``dataset`` ("cifar10", ...)
    lives or is downloaded to. Without ``data``, ``dataset`` is loaded from the default root.
    """
    if config.data is not None:
        source = Path(config.data).expanduser()
        if source.is_file() or (source / "train").is_dir():
            return load_dataset(str(source))
    return load_dataset(config.dataset, root=config.data)


def run(config: TrainConfig) -> TrainResult:
    """Train the model that ``config`` names on its dataset, writing everything into ``config.out``.

    Loads the dataset (``config.dataset``, from ``config.data``), seeds, builds
    ``create_model(config.model, num_classes, width=config.width)`` (adapted to the data's channels) and the
    penalty, and calls :func:`train`. Under torchrun, rank 0 loads (and if needed downloads) the data first.
    """
    ctx = _dist_from_env()
    device = resolve_device(config.device, ctx.local_rank)
    with _process_group(ctx, device):
        if ctx.active and not ctx.is_main:
            dist.barrier()  # let rank 0 download and cache the data first
        dataset = load_dataset_for(config)
        if ctx.active and ctx.is_main:
            dist.barrier()
        seed_everything(config.seed)
        model = models.create_model(
            config.model, num_classes=dataset.num_classes, **_model_kwargs(config, dataset.input_shape)
        )
        return train(model, dataset, config, out_dir=config.out)

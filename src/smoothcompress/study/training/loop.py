"""The training loop: :func:`train` (any model, any :class:`~smoothcompress.study.data.Dataset`) and :func:`run` (the
dataset, model and penalty a :class:`~smoothcompress.study.training.TrainConfig` names), plus the pure pieces they use:
the learning-rate schedule, the penalty warm-up, the optimiser and the penalty built from a config.

The contract of a run folder, of resume and of DDP training is described in :mod:`smoothcompress.study.training`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from smoothcompress import io as sc_io
from smoothcompress import models
from smoothcompress.errors import ConfigError, SmoothcompressError
from smoothcompress.files import FolderLock, append_jsonl, write_jsonl
from smoothcompress.inputs import record_input
from smoothcompress.io import CheckpointError
from smoothcompress.lowrank import compress
from smoothcompress.rankfile import read_ranks
from smoothcompress.regularize import Smoothness
from smoothcompress.study.data import DataError, Dataset, Loader, load_dataset, split_validation
from smoothcompress.study.data.imagefolder import archive_stem
from smoothcompress.study.training.checkpoint import (
    CHECKPOINT_NAME,
    check_same_settings,
    load_checkpoint,
    save_checkpoint,
)
from smoothcompress.study.training.config import SCHEDULES, TrainConfig, make_regularizer
from smoothcompress.study.training.eta import duration, time_left
from smoothcompress.study.training.evaluation import count_correct, eval_loader, to_input
from smoothcompress.study.training.runtime import (
    DistContext,
    dist_from_env,
    process_group,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)

__all__ = [
    "TrainResult",
    "TrainingDiverged",
    "train",
    "run",
    "load_dataset_for",
    "lr_factor",
    "penalty_ramp",
    "make_optimizer",
    "make_regularizer",
]

log = logging.getLogger(__name__)


class TrainingDiverged(SmoothcompressError, RuntimeError):
    """The training loss (or the penalty) became NaN or infinite; the last good checkpoint is kept.

    A :class:`~smoothcompress.errors.SmoothcompressError` (so a ``ValueError``) and, as before, a ``RuntimeError``.
    """


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
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")


def penalty_ramp(step: int, steps_per_epoch: int, warmup_epochs: float, delay_epochs: float = 0.0) -> float:
    """Fraction of the full penalty weight at optimizer step ``step`` (0-based): 0 for the first ``delay_epochs``,
    then linear over ``warmup_epochs`` (the first step after the delay gets ``1 / warmup steps``)."""
    step -= round(delay_epochs * steps_per_epoch)
    if step < 0:
        return 0.0
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
        raise ConfigError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


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
    ctx: DistContext
    device: torch.device
    raw: nn.Module  # the model itself
    net: nn.Module  # what the forward pass calls: raw, or raw wrapped by DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reg: Smoothness | None
    full_weight: float  # the penalty's weight after the warm-up
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
        From :func:`smoothcompress.study.data.load_dataset` (uint8 images, labels, mean and std).
    config : TrainConfig, optional
        Hyperparameters; default ``TrainConfig()``. ``dataset``, ``data``, ``model`` and ``width`` are ignored
        here (they are :func:`run`'s).
    out_dir : path, optional
        Run folder for ``metrics.jsonl``, ``config.toml``, ``checkpoint.pt`` and ``model.safetensors``, locked
        (``OUT/.lock``, :class:`~smoothcompress.files.FolderLock`) while training. With ``None`` nothing is
        written (and nothing can be resumed).
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
    FileExistsError
        When another live process is training into ``out_dir`` (a killed run's lock is taken over).
    """
    start = time.perf_counter()
    config = config if config is not None else TrainConfig()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"dataset must be a smoothcompress Dataset (from smoothcompress.load_dataset), got {type(dataset).__name__}"
        )
    ctx = dist_from_env()
    if config.batch_size % ctx.world_size:  # before joining the group: fail fast, do not wait for the peers
        raise ConfigError(
            f"batch_size={config.batch_size} is the global batch and must be divisible by the "
            f"{ctx.world_size} processes"
        )
    device = resolve_device(config.device, ctx.local_rank)
    with process_group(ctx, device):
        ctx = dist_from_env()
        with _folder_lock(out_dir, ctx):
            run_ = _setup(model, dataset, config, out_dir, regularizer, ctx, device)
            try:
                history, resumed_from = _restore_or_start(run_)
                for epoch in range(len(history), run_.config.epochs):
                    history.append(_train_epoch(run_, epoch, history))
                return _finish(run_, dataset, history, resumed_from, start)
            finally:
                run_.net = None  # drop the DDP wrapper (it holds the process group) before the group is destroyed


@contextlib.contextmanager
def _folder_lock(out_dir: str | os.PathLike | None, ctx: DistContext) -> Iterator[None]:
    """Hold ``out_dir``'s :class:`~smoothcompress.files.FolderLock` (rank 0 takes it; under DDP every rank
    learns whether it got it, so that all of them fail together instead of waiting for each other)."""
    if out_dir is None:
        yield
        return
    lock = FolderLock(out_dir, user="training run")
    refusal = None
    if ctx.is_main:
        try:
            lock.acquire()
        except FileExistsError as e:
            refusal = str(e)
    if ctx.active:
        box = [refusal]
        dist.broadcast_object_list(box, src=0)
        refusal = box[0]
    if refusal is not None:
        raise FileExistsError(refusal)
    try:
        yield
    finally:
        lock.release()


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
        raise ConfigError(
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
        full_weight=float(reg.weight) if reg is not None else 0.0,
        train_loader=train_loader,
        eval_loader=eval_loader(dataset, device, ctx),
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
            raise ConfigError(
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
        set_rng_state(state["rng"])
        history, resumed_from = list(state["history"]), int(state["epoch"])
        log.info("resumed from %s at epoch %d", r.ckpt_path, resumed_from)
    else:
        seed_everything(r.config.seed)
    if r.writes:
        r.config.to_toml(r.ckpt_path.parent / "config.toml")
        write_jsonl(r.ckpt_path.parent / "metrics.jsonl", history)  # drops rows of epochs not checkpointed
    return history, resumed_from


def _global_sum(t: torch.Tensor, ctx: DistContext) -> list[float]:
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
    pen = f", the penalty term {penalty:g} (weight {r.full_weight:g})" if r.reg is not None else ""
    lr = f"the learning rate is too high (lr={r.config.lr:g}; try it 2-10x smaller)"
    causes = (
        f"Likely causes: the penalty weight is too large (weight={r.full_weight:g}; try it 10x smaller, or ramp it "
        f"up with reg_warmup_epochs), or {lr}."
        if r.reg is not None
        else f"Likely cause: {lr}."
    )
    return TrainingDiverged(
        f"training diverged in epoch {epoch + 1} by step {step + 1}: the mean loss is {loss:g}{pen}. {causes} {kept}"
    )


def _train_epoch(r: _Run, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    """One pass over the training set, then evaluation, checkpoint and metrics row."""
    cfg, device = r.config, r.device
    r.train_loader.set_epoch(epoch)
    r.net.train()
    # Running sums stay on the device (no host sync per step): loss * batch, correct predictions, penalty.
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    seen, lr, fired = 0, cfg.lr, 0  # fired: steps whose loss held the penalty term
    sync_every = max(1, r.steps // 10)  # ~10 host syncs per epoch: progress bar and NaN check
    bar = tqdm(total=r.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not r.progress)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(r.train_loader):
        step = epoch * r.steps + i
        x = to_input(x, r.channels_last)
        if r.reg is not None:
            # The penalty is built before the forward pass, so that autograd runs its backward after the
            # network's rather than first, instead of holding its gradients through the whole network backward.
            r.reg.weight = r.full_weight * penalty_ramp(step, r.steps, cfg.reg_warmup_epochs, cfg.reg_delay_epochs)
            fired += _in_loss(r.reg)
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
    correct_eval, total_eval = _global_sum(count_correct(r.raw, r.eval_loader, device, r.bf16, r.channels_last), r.ctx)
    n = seen * r.ctx.world_size
    row = {
        "epoch": epoch + 1,
        "epochs": cfg.epochs,
        "loss": loss_sum / n,
        "train_acc": correct / n,
        r.eval_key: correct_eval / total_eval,
        "penalty": pen_sum / r.ctx.world_size / (getattr(r.reg, "every", 1) * fired) if fired else _penalty_value(r),
        "reg_weight": r.reg.weight if r.reg is not None else 0.0,
        "lr": lr,
        "images_per_s": n / seconds,
        "seconds": seconds,
        "eval_seconds": time.perf_counter() - t1,
    }
    if r.writes:
        save_checkpoint(r.ckpt_path, _checkpoint_state(r, epoch + 1, [*history, row]))
        append_jsonl(r.ckpt_path.parent / "metrics.jsonl", row)
    left = time_left([*history, row], cfg.epochs)
    log.info(
        "epoch %d/%d  loss %.4f  train_acc %.4f  %s %.4f%s  %.0f img/s%s",
        epoch + 1, cfg.epochs, row["loss"], row["train_acc"], r.eval_key, row[r.eval_key],
        f"  penalty {row['penalty']:.4g}" if r.reg is not None else "", row["images_per_s"],
        f"  {duration(left)} left" if left else "",
    )  # fmt: skip
    return row


def _in_loss(reg) -> bool:
    """Whether this step's loss holds the penalty term (:meth:`Smoothness.active`); a stand-in penalty without that
    schedule always."""
    active = getattr(reg, "active", None)
    return bool(active()) if active is not None else True


def _penalty_value(r: _Run) -> float:
    """The penalty term ``weight * sum of layer terms`` of the model now, on a copy of the regularizer (whose
    stored polar factors a call may refresh: the run's own must not change); 0 without a penalty, or for a
    stand-in penalty without :meth:`Smoothness.unweighted`."""
    if r.reg is None or r.reg.weight == 0 or not hasattr(r.reg, "unweighted"):
        return 0.0
    with torch.no_grad():
        return float(r.reg.weight * copy.deepcopy(r.reg).unweighted(r.raw))


def _checkpoint_state(r: _Run, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model": r.raw.state_dict(),
        "optimizer": r.optimizer.state_dict(),
        "scheduler": r.scheduler.state_dict(),
        "regularizer": r.reg.state_dict() if r.reg is not None and hasattr(r.reg, "state_dict") else None,
        "rng": rng_state(),
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
        counts = count_correct(r.raw, eval_loader(dataset, r.device, r.ctx), r.device, r.bf16, False)
        correct, total = _global_sum(counts, r.ctx)
        test_acc = correct / total
    if r.writes:
        record_input(r.raw, dataset)  # what the model takes, saved with it: evaluate refuses other data
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
        accepted = models.model_options(config.model)
        if "in_channels" in accepted:
            kwargs["in_channels"] = int(input_shape[0])
        elif "in_features" in accepted:
            kwargs["in_features"] = int(np.prod(input_shape))
    return kwargs


def load_dataset_for(config: TrainConfig) -> Dataset:
    """The dataset a config names: ``dataset`` from ``data``.

    ``data`` is either an ImageFolder source (a file such as ``cifar10-jpeg.tar.gz``, or a directory with
    ``train/`` and ``test/`` folders), loaded as is, or the data root under which ``dataset`` ("cifar10", ...)
    lives or is downloaded to. Without ``data``, ``dataset`` is loaded from the default root. A ``data`` named
    like an archive (``.tar.gz``, ``.tgz``, ``.tar``) that does not exist raises
    :class:`~smoothcompress.study.data.DataError` ("no such file"), without trying a download.
    """
    if config.data is not None:
        source = Path(config.data).expanduser()
        if source.is_file() or (source / "train").is_dir():
            return load_dataset(str(source))
        if not source.exists() and archive_stem(source) is not None:
            raise DataError(
                f"data {source}: no such file; give the path of an existing ImageFolder archive or folder, or the "
                "folder that holds (or is to receive) the official files"
            )
    return load_dataset(config.dataset, root=config.data)


def run(config: TrainConfig) -> TrainResult:
    """Train the model that ``config`` names on its dataset, writing everything into ``config.out``.

    Loads the dataset (``config.dataset``, from ``config.data``), seeds, builds
    ``create_model(config.model, num_classes, width=config.width)`` (adapted to the data's channels) and the
    penalty, and calls :func:`train`. With ``config.lowrank_ranks`` the model is first factorized at the ranks
    file's ranks for ``config.lowrank_rate`` (:func:`smoothcompress.compress` with explicit ``ranks``: the
    truncated SVD of the fresh weights), so that the small architecture is trained from scratch. Under
    torchrun, rank 0 loads (and if needed downloads) the data first.
    """
    ctx = dist_from_env()
    device = resolve_device(config.device, ctx.local_rank)
    with process_group(ctx, device):
        if ctx.active and not ctx.is_main:
            dist.barrier()  # let rank 0 download and cache the data first
        dataset = load_dataset_for(config)
        if ctx.active and ctx.is_main:
            dist.barrier()
        seed_everything(config.seed)
        model = models.create_model(
            config.model, num_classes=dataset.num_classes, **_model_kwargs(config, dataset.input_shape)
        )
        if config.lowrank_ranks is not None:  # the factorized architecture, spectrally initialised
            model = compress(model, ranks=read_ranks(config.lowrank_ranks, config.lowrank_rate))
        return train(model, dataset, config, out_dir=config.out)

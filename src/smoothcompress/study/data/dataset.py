"""The in-memory :class:`Dataset`: a classification dataset as uint8 tensors, its statistics and validation split.

:func:`smoothcompress.study.data.sources.load_dataset` gives one from a name or path. The data root is the ``root``
argument, else ``$SMOOTHCOMPRESS_DATA``, else ``~/.cache/smoothcompress`` (:func:`default_root`). Every problem with
the data itself (missing, offline, corrupt) raises :class:`DataError`, whose message says what to do; the CLI prints
it without a traceback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from smoothcompress.errors import ConfigError, SmoothcompressError
from smoothcompress.study.data.loader import Loader, mix_seed

__all__ = ["DataError", "Dataset", "ROOT_ENV", "channel_stats", "default_root", "split_validation"]

ROOT_ENV = "SMOOTHCOMPRESS_DATA"
"""Environment variable naming the data root (official archives, ImageFolder caches)."""


class DataError(SmoothcompressError, RuntimeError):
    """A problem with the data itself: missing, unreachable, corrupt. The message says what to do about it.

    A :class:`~smoothcompress.errors.SmoothcompressError` (so a ``ValueError``) and, as before, a ``RuntimeError``.
    """


@dataclass(eq=False)  # datasets compare by identity; compare their tensors explicitly
class Dataset:
    """A classification dataset held in memory as uint8 tensors.

    Parameters
    ----------
    name : str
        ``"cifar10"``, ``"cifar100"``, ``"digits"`` or ``"imagefolder:<stem>"``; ``"+val"`` is appended by
        :func:`split_validation`.
    x_train : torch.Tensor
        uint8, shape (N, C, H, W).
    y_train : torch.Tensor
        int64, shape (N,), values in ``[0, len(classes))``.
    x_test : torch.Tensor
        uint8, shape (M, C, H, W).
    y_test : torch.Tensor
        int64, shape (M,).
    classes : list of str
        Class names; label ``k`` is ``classes[k]``.
    mean, std : tuple of float
        Per-channel mean and standard deviation of ``x_train / 255``, length C.
    sha256 : str
        sha256 of the source it came from (the archive, or the files of a directory), for provenance.
    augment : bool
        True when random crop and horizontal flip suit the images (CIFAR, ImageFolder), False for digits.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    classes: list[str] = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sha256: str
    augment: bool

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ConfigError(
                    f"x_{split} must be a uint8 tensor of shape (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ConfigError(f"y_{split} must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ConfigError(
                f"train and test images differ in shape: {self.x_train.shape[1:]} vs {self.x_test.shape[1:]}"
            )
        if len(self.mean) != self.x_train.shape[1] or len(self.std) != self.x_train.shape[1]:
            raise ConfigError(f"mean and std need one value per channel ({self.x_train.shape[1]})")

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    def calibration_size(self) -> int:
        """Number of training images: all that calibration may read (never the test split)."""
        return int(self.x_train.shape[0])

    def calibration_batches(
        self, images: int, batch_size: int, *, seed: int = 0, augment: bool = False, device="cpu"
    ) -> Iterator[torch.Tensor]:
        """Calibration batches (:class:`smoothcompress.calibration.CalibrationSource`): ``images`` training images
        drawn at random with ``seed`` (all of them when there are fewer), in index order, normalised with
        :attr:`mean` and :attr:`std`, with the training augmentation when ``augment`` and :attr:`augment`."""
        n = self.x_train.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        pick = torch.randperm(n, generator=gen)[: min(int(images), n)].sort().values
        loader = Loader(
            self.x_train[pick],
            self.y_train[pick],
            int(batch_size),
            train=augment,
            augment=augment and self.augment,
            drop_last=False,
            mean=self.mean,
            std=self.std,
            seed=seed,
            device=device,
        )
        for x, _ in loader:
            yield x

    def __str__(self) -> str:
        c, h, w = self.input_shape
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test images, {c}x{h}x{w}, "
            f"{self.num_classes} classes, sha256 {self.sha256[:12]}"
        )

    @classmethod
    def from_arrays(cls, name, x_train, y_train, x_test, y_test, classes, sha256: str, augment: bool) -> Dataset:
        """A Dataset from uint8 images ``(N, C, H, W)`` and integer labels ``(N,)`` (tensors or arrays).

        The labels become int64, the class names strings, and ``mean``/``std`` are computed from ``x_train`` with
        :func:`channel_stats` (a constant channel gets std ``1e-8``, not 0). Raises ``ValueError`` like the
        constructor on bad shapes or dtypes.
        """
        x_train, x_test = torch.as_tensor(x_train), torch.as_tensor(x_test)
        mean, std = channel_stats(x_train)
        return cls(
            name=name,
            x_train=x_train,
            y_train=torch.as_tensor(y_train, dtype=torch.int64),
            x_test=x_test,
            y_test=torch.as_tensor(y_test, dtype=torch.int64),
            classes=[str(c) for c in classes],
            mean=mean,
            std=tuple(max(s, 1e-8) for s in std),
            sha256=sha256,
            augment=augment,
        )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of ``x / 255``, from a histogram (no float copy of ``x``).

    Parameters
    ----------
    x : torch.Tensor
        uint8, shape (N, C, H, W).

    Returns
    -------
    mean, std : tuple of float
        Each of length C.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).double().numpy()
        n = hist.sum()
        m = float((hist * values).sum() / n)
        v = float((hist * (values - m) ** 2).sum() / n)
        mean.append(m)
        std.append(math.sqrt(v))
    return tuple(mean), tuple(std)


def default_root() -> Path:
    """The data root: ``$SMOOTHCOMPRESS_DATA`` if set, else ``~/.cache/smoothcompress``."""
    return Path(os.environ.get(ROOT_ENV) or "~/.cache/smoothcompress").expanduser()


def split_validation(ds: Dataset, fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Carve a stratified validation set out of the training split, fixed by ``seed``.

    Each class gives ``round(fraction * n_class)`` of its training images, chosen by a seeded permutation. The
    test split is never touched: use the result to choose hyperparameters, then report on the real test set.

    Parameters
    ----------
    ds : Dataset
        The full dataset.
    fraction : float
        Fraction of each class moved to validation, in (0, 1).
    seed : int
        Seed of the choice; the same seed always gives the same split.

    Returns
    -------
    Dataset
        Named ``ds.name + "+val"``: ``x_train``/``y_train`` are the remaining training images, ``x_test``/``y_test``
        the validation images (both in their original order), mean and std recomputed on the new training part.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(mix_seed(seed, -1))
    order = torch.randperm(len(ds.y_train), generator=gen)
    labels = ds.y_train[order]
    by_class = torch.argsort(labels, stable=True)  # a random order within each class
    counts = torch.bincount(labels, minlength=ds.num_classes)
    take = torch.round(counts.double() * fraction).long()
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(len(labels)) - starts[labels[by_class]]
    chosen = order[by_class[rank_in_class < take[labels[by_class]]]]
    if len(chosen) == 0 or len(chosen) == len(labels):
        raise ConfigError(f"fraction={fraction} leaves an empty split of {len(labels)} training images")
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[chosen] = True
    x_train, y_train = ds.x_train[~is_val], ds.y_train[~is_val]
    mean, std = channel_stats(x_train)
    return replace(
        ds,
        name=ds.name + "+val",
        x_train=x_train,
        y_train=y_train,
        x_test=ds.x_train[is_val],
        y_test=ds.y_train[is_val],
        mean=mean,
        std=tuple(max(s, 1e-8) for s in std),
    )

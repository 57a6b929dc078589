"""The on-device :class:`Loader` and its vectorised augmentation, :func:`augment_batch`.

:class:`Loader` keeps a whole uint8 split on the device and yields normalised float32 batches. Shuffling and
augmentation (random crop with zero padding, horizontal flip) are drawn for a whole epoch from a generator seeded
by ``(seed, epoch)`` (:func:`mix_seed`), so an epoch is reproducible on its own (exact resume) and the same under
any number of DDP ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch

from smoothcompress.errors import ConfigError

__all__ = ["Loader", "augment_batch", "mix_seed"]


def mix_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends on ``(seed, epoch)`` only, without collisions between nearby pairs."""
    digest = hashlib.sha256(f"smoothcompress:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def augment_batch(
    x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip of a batch, in one vectorised gather.

    Sample ``b`` is zero-padded by ``padding`` pixels on every side, cropped back to (H, W) at row ``oy[b]`` and
    column ``ox[b]`` of the padded image, then mirrored left-right where ``flip[b]``. ``oy = ox = padding`` and no
    flip is the identity.

    Parameters
    ----------
    x : torch.Tensor
        Shape (B, C, H, W), any dtype.
    oy, ox : torch.Tensor
        int64, shape (B,), values in ``[0, 2 * padding]``: top-left corner of the crop in the padded image.
    flip : torch.Tensor
        bool, shape (B,).
    padding : int
        Zero padding on each side, in pixels.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.
    """
    b, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = x.new_zeros(b, c, hp, wp)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H) rows of the padded image
    j = torch.arange(w, device=x.device)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - j, j)  # (B, W) columns, mirrored where flipped
    # One gather over the flattened padded image, its index shared by the channels (advanced indexing would
    # broadcast four index tensors to the batch's full shape).
    source = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, hp * wp).gather(2, source).view(b, c, h, w)


class Loader:
    """Batches of a whole uint8 split that lives on the device: shuffled, sharded, augmented and normalised there.

    Parameters
    ----------
    x : torch.Tensor
        uint8, shape (N, C, H, W); moved to ``device`` once.
    y : torch.Tensor
        int64, shape (N,).
    batch_size : int
        Images per batch on this rank (the global batch under DDP is ``batch_size * world_size``).
    train : bool
        True: a fresh permutation each epoch, optional augmentation, and the last partial batch dropped by
        default. False: the data in order, no augmentation, nothing dropped.
    mean, std : sequence of float
        Per-channel statistics of ``x / 255`` used to normalise, length C.
    augment : bool
        Random crop with zero padding and horizontal flip. Only applies when ``train``; ignored otherwise.
    seed : int
        Seed of shuffling and augmentation; an epoch depends only on ``(seed, epoch)``.
    device : str or torch.device
        Where the data lives and the batches are made.
    drop_last : bool, optional
        Drop the last partial batch of each epoch. Default: ``train``.
    rank, world_size : int
        DDP sharding. With ``train`` every rank gets a disjoint slice of equal size ``N // world_size`` of the epoch
        permutation (strided, so that step ``i`` of all ranks together sees the same images as step ``i`` of one
        process with batch ``batch_size * world_size``); the ``N % world_size`` left over change every epoch.
        Without ``train`` rank ``r`` gets images ``r, r + world_size, ...``: disjoint, covering, sizes differing by
        at most one, so reduce sums over the whole evaluation, not per batch.
    padding : int
        Zero padding of the random crop, in pixels.

    Notes
    -----
    Call :meth:`set_epoch` before each epoch; iterating twice without it repeats the same epoch. Each batch is
    ``(images, labels)``: float32 (B, C, H, W) normalised, and int64 (B,), both on ``device``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        padding: int = 4,
    ) -> None:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise ConfigError(f"x must be a uint8 tensor of shape (N, C, H, W), got {getattr(x, 'dtype', type(x))}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ConfigError(f"y must be an int64 tensor of shape ({x.shape[0]},)")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        channels = x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
        if any(float(s) <= 0 for s in std):
            raise ConfigError(f"std must be positive, got {tuple(std)}")
        if int(padding) < 0:
            raise ConfigError(f"padding must be >= 0, got {padding}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        self.seed = int(seed)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.padding = int(padding)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, channels, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, channels, 1, 1).to(self.device)
        self.epoch = 0
        self.start_batch = 0
        if len(self) == 0:
            raise ConfigError(
                f"no batches: {self.num_samples} images on this rank, batch_size={self.batch_size}, "
                f"drop_last={self.drop_last}"
            )

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (before a partial last batch is dropped)."""
        n = self.x.shape[0]
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m = self.num_samples
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, and optionally the batch to start from (resuming mid-epoch).

        Parameters
        ----------
        epoch : int
            Epoch number; shuffling and augmentation depend only on ``(seed, epoch)``.
        start_batch : int
            Skip the first ``start_batch`` batches at no cost; the rest are exactly those of the full epoch.
        """
        if not 0 <= int(start_batch) <= len(self):
            raise ConfigError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's sample indices for the epoch, and their augmentation parameters (oy, ox, flip) if any."""
        n = self.x.shape[0]
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        aug = None
        if self.augment:
            span = 2 * self.padding + 1
            aug = torch.stack(
                [
                    torch.randint(span, (n,), generator=gen),
                    torch.randint(span, (n,), generator=gen),
                    torch.randint(2, (n,), generator=gen),
                ]
            )
        stop = self.num_samples * self.world_size if self.train else n
        positions = torch.arange(self.rank, stop, self.world_size)
        indices = order[positions].to(self.device)
        if aug is not None:
            aug = aug[:, positions].to(self.device)
        return indices, aug

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self.start_batch = self.start_batch, 0  # a start_batch applies to the next pass only
        return self._batches(start)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, aug = self._plan()
        bs = self.batch_size
        for b in range(start, len(self)):
            idx = indices[b * bs : (b + 1) * bs]
            xb = self.x[idx]
            if aug is not None:
                a = aug[:, b * bs : (b + 1) * bs]
                xb = augment_batch(xb, a[0], a[1], a[2].bool(), self.padding)
            yield torch.addcmul(self._shift, xb.float(), self._scale), self.y[idx]

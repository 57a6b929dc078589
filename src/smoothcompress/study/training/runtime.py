"""Where and how a training process runs: its device, its place in a torchrun job, and the global RNG states.

* :func:`resolve_device` turns ``"cpu"``/``"cuda"``/``"auto"`` into a device (``cuda:LOCAL_RANK`` under torchrun).
* :class:`DistContext` is this process's rank, world size and local rank, read by :func:`dist_from_env` from an
  initialised process group or from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables.
* :func:`process_group` joins the torchrun process group (gloo on CPU, NCCL on CUDA) for the duration of a call.
* :func:`seed_everything`, :func:`rng_state` and :func:`set_rng_state` seed, save and restore the torch (CPU and
  CUDA), NumPy and Python RNGs; the saved state loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from smoothcompress.errors import ConfigError
from smoothcompress.study.training.config import DEVICES

__all__ = [
    "DistContext",
    "dist_from_env",
    "resolve_device",
    "process_group",
    "seed_everything",
    "rng_state",
    "set_rng_state",
]


@dataclass(frozen=True)
class DistContext:
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


def dist_from_env() -> DistContext:
    """This process's place: from the initialised process group, else torchrun's variables; ``ValueError`` if bad."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        return DistContext(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (they are set by torchrun)") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` -> a torch device; under torchrun, CUDA process k uses ``cuda:k``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device='cuda' but PyTorch sees no CUDA GPU (torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")


@contextlib.contextmanager
def process_group(ctx: DistContext, device: torch.device) -> Iterator[None]:
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


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), np_gauss],
        "python": [py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore every global RNG state saved by :func:`rng_state` (CUDA only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state.tolist()), py_gauss))

"""Training: SGD with Nesterov momentum plus a smoothness penalty; checkpoints, exact resume, DDP.

Three entry points:

* :func:`train` trains any ``nn.Module`` on a :class:`~smoothcompress.study.data.Dataset` with a :class:`TrainConfig`.
* :func:`run` builds the dataset, model and penalty named in a :class:`TrainConfig` and calls :func:`train`
  (this is ``smoothcompress train``).
* :func:`evaluate` is the top-1 accuracy of a model on a dataset's test split or on a loader.

A run folder ``OUT`` holds ``metrics.jsonl`` (one JSON object per epoch, keys ``"epoch"`` and ``"epochs"``, the
number planned; its ``"penalty"`` is the
penalty term ``weight * sum of layer terms`` averaged over the epoch's steps whose loss held it, the ``reg_every``
scale taken out, or, when none did (``reg_every`` longer than an epoch, ``reg_proximal``), its value after the
epoch's last step), ``config.toml`` (the
resolved config), ``checkpoint.pt`` (rewritten atomically after every epoch) and, at the end,
``model.safetensors`` (loadable with :func:`smoothcompress.load`). While a run trains, it holds ``OUT/.lock``
(:class:`~smoothcompress.files.FolderLock`): a second run into the same folder fails with a one-line
``FileExistsError``; the lock of a killed run is taken over, so ``resume=True`` works after a kill.

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

Modules: :mod:`~smoothcompress.study.training.config` (:class:`TrainConfig`),
:mod:`~smoothcompress.study.training.loop` (:func:`train`, :func:`run`, schedule, optimiser),
:mod:`~smoothcompress.study.training.checkpoint`, :mod:`~smoothcompress.study.training.evaluation`
(:func:`evaluate`), :mod:`~smoothcompress.study.training.runtime` (device, torchrun process group, RNG states)
and :mod:`~smoothcompress.study.training.eta` (the time a run still needs).
"""

from smoothcompress.study.training.checkpoint import (
    CHECKPOINT_NAME,
    check_same_settings,
    load_checkpoint,
    save_checkpoint,
    settings_changes,
)
from smoothcompress.study.training.config import DEVICES, REG_KINDS, SCHEDULES, TrainConfig, read_toml, write_toml
from smoothcompress.study.training.eta import duration, time_left
from smoothcompress.study.training.evaluation import EVAL_BATCH, evaluate
from smoothcompress.study.training.loop import (
    TrainingDiverged,
    TrainResult,
    load_dataset_for,
    lr_factor,
    make_optimizer,
    make_regularizer,
    penalty_ramp,
    run,
    train,
)
from smoothcompress.study.training.runtime import resolve_device, rng_state, seed_everything, set_rng_state

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
    "make_optimizer",
    "make_regularizer",
    "load_checkpoint",
    "save_checkpoint",
    "check_same_settings",
    "settings_changes",
    "read_toml",
    "write_toml",
    "time_left",
    "duration",
    "resolve_device",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "CHECKPOINT_NAME",
    "EVAL_BATCH",
    "DEVICES",
    "REG_KINDS",
    "SCHEDULES",
]

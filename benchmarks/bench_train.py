"""Training throughput of the CIFAR ResNet-18 through ``smoothcompress.train`` against a plain PyTorch loop.

Run (CPU, the default): ``.venv/bin/python benchmarks/bench_train.py [--widths 16 64] [--steps 5] [--reps 3]``.
Writes ``benchmarks/results/train.json``.

Run (GPU): ``python benchmarks/bench_train.py --device cuda [--data ../shared/data/cifar10-jpeg.tar.gz]
[--epochs 4] [--compile]``. Writes ``benchmarks/results/train_cuda.json``.

CPU: images/s of the trainer and of a minimal loop over the same model, batch (128) and device, with
``torch.set_num_threads(--threads)``, on ``--steps`` batches of random CIFAR-shaped images per repetition:

- ``trainer``: :func:`smoothcompress.train` for one epoch over ``steps * 128`` images, with everything a real run
  does on the way (on-device crop + flip augmentation, label smoothing, Nesterov SGD with weight decay, the lr
  schedule, on-device metric sums, the NaN check).
- ``plain``: ``for x, y in batches: cross_entropy(model(x), y).backward(); opt.step()`` over pre-normalised
  batches already on the device (no augmentation), Nesterov SGD with weight decay.

A step is timed as the interval between the starts of two consecutive training forward passes (a forward
pre-hook on the model), so it holds everything either loop does per step, batch making included. The first
step of every run (cold: allocations, oneDNN primitives) and the last (no next forward) are left out. Every
repetition builds fresh models, one unrecorded warm-up repetition of each comes first, and the two loops are
interleaved, the order alternating. The ratio is ``median plain step / median trainer step`` over all steps of
all repetitions. Two more estimates are recorded because a shared machine's load comes in bursts that can cover
whole runs: ``median_rep_ratio``, the median over repetitions of the ratio of two neighbouring runs, and
``best_ratio``, fastest step against fastest step (interference only ever adds time). The trainer's own epoch
images/s (``metrics.jsonl``: first batch to the end-of-epoch sync, cold step included) is recorded as
``trainer_epoch_images_per_s``.
Target: trainer / plain >= 0.95.

GPU: seconds per epoch of the ResNet-18 (width 64) on CIFAR-10 through the trainer (bf16 autocast,
channels_last, batch 512, optionally torch.compile), median over the epochs after the first, plus the plain loop
with the same bf16 + channels_last over one epoch of the same batches. Target: <= 3 s per epoch on one H100.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import device_name, provenance
from smoothcompress.study.training import TrainConfig, load_dataset_for

RESULTS = Path(__file__).resolve().parent / "results"
ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
SEED = 0


def synthetic_cifar(n_train: int, n_test: int, seed: int = SEED) -> sc.Dataset:
    """Random uint8 images of CIFAR shape (3, 32, 32) with random labels; augmentation on, as for CIFAR."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return sc.Dataset(
        name="synthetic-cifar-shape",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        classes=[str(k) for k in range(10)],
        mean=(0.5, 0.5, 0.5),
        std=(0.29, 0.29, 0.29),
        sha256="synthetic",
        augment=True,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_batches(ds: sc.Dataset, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training images normalised once, cut into full batches on the device."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    x = ((ds.x_train.float() / 255 - mean) / std).to(device)
    y = ds.y_train.to(device)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(y) - batch + 1, batch)]


class StepClock:
    """Records when each training-mode forward pass of a model starts (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module):
        self.starts: list[float] = []
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if module.training:
            self.starts.append(time.perf_counter())

    def steady_steps(self) -> list[float]:
        """Seconds of each whole step but the first (cold) and the last (not closed by a next forward)."""
        return [b - a for a, b in zip(self.starts[1:-1], self.starts[2:], strict=True)]


def plain_loop(width: int, batches, device: torch.device, fast: bool = False) -> tuple[float, list[float]]:
    """A minimal training loop; ``fast``: bf16 autocast + channels_last (for CUDA).

    Returns images/s over all batches and the steady step times (see :class:`StepClock`).
    """
    torch.manual_seed(SEED)
    model = sc.create_model("resnet18", width=width).to(device).train()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    clock = StepClock(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return sum(len(y) for _, y in batches) / (time.perf_counter() - t0), clock.steady_steps()


def trainer_epochs(width: int, ds: sc.Dataset, config: TrainConfig) -> tuple[sc.TrainResult, float, list[float]]:
    """Train through the trainer (no run folder): the result, the wall time of the call, the steady step times."""
    torch.manual_seed(SEED)
    model = sc.create_model("resnet18", num_classes=ds.num_classes, width=width)
    clock = StepClock(model)
    t0 = time.perf_counter()
    result = sc.train(model, ds, config)
    return result, time.perf_counter() - t0, clock.steady_steps()


def bench_cpu(args) -> dict:
    if args.steps < 3:
        raise SystemExit("--steps must be >= 3 (the first and last step of a run are not timed)")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ds = synthetic_cifar(args.steps * args.batch, args.batch)
    batches = plain_batches(ds, args.batch, device)
    config = TrainConfig(epochs=1, batch_size=args.batch, lr=0.1, device="cpu")
    rows = []
    for width in args.widths:
        steps = {"trainer": [], "plain": []}
        per_rep, epoch_ips, calls = [], [], []
        for rep in range(args.reps + 1):  # rep 0 warms up both and is not recorded
            order = ("plain", "trainer") if rep % 2 else ("trainer", "plain")
            got = {}
            for which in order:
                if which == "plain":
                    _, got["plain"] = plain_loop(width, batches, device)
                else:
                    result, wall, got["trainer"] = trainer_epochs(width, ds, config)
                    if rep:
                        epoch_ips.append(result.history[0]["images_per_s"])
                        calls.append(wall)
            if rep:
                for k in steps:
                    steps[k] += got[k]
                t, p = statistics.median(got["trainer"]), statistics.median(got["plain"])
                per_rep.append(p / t)
                print(f"  width {width} rep {rep}: step trainer {t:.3f} s, plain {p:.3f} s, ratio {p / t:.3f}")
        t_med, p_med = statistics.median(steps["trainer"]), statistics.median(steps["plain"])
        row = {
            "model": "resnet18",
            "width": width,
            "params": sc.count_params(sc.create_model("resnet18", width=width)),
            "batch": args.batch,
            "steps_per_rep": args.steps,
            "timed_steps_per_rep": args.steps - 2,
            "reps": args.reps,
            "trainer_step_s": steps["trainer"],
            "plain_step_s": steps["plain"],
            "trainer_images_per_s": args.batch / t_med,
            "plain_images_per_s": args.batch / p_med,
            "ratio": p_med / t_med,
            "best_ratio": min(steps["plain"]) / min(steps["trainer"]),
            "per_rep_ratios": per_rep,
            "median_rep_ratio": statistics.median(per_rep),
            "trainer_epoch_images_per_s": epoch_ips,
            "trainer_call_s": calls,
            "target_ratio": 0.95,
        }
        row["meets_target"] = row["ratio"] >= 0.95
        rows.append(row)

    print(f"\nCIFAR ResNet-18 training throughput, CPU, {args.threads} threads, batch {args.batch}")
    header = f"{'width':>6} {'params':>11} {'trainer img/s':>14} {'plain img/s':>12} {'ratio':>6} {'per-rep':>7}"
    print(header + f" {'best':>6}  target >= 0.95")
    for r in rows:
        print(
            f"{r['width']:>6} {r['params']:>11,} {r['trainer_images_per_s']:>14.1f} {r['plain_images_per_s']:>12.1f} "
            f"{r['ratio']:>6.3f} {r['median_rep_ratio']:>7.3f} {r['best_ratio']:>6.3f}  "
            f"{'ok' if r['meets_target'] else 'MISSED'}"
        )
    return {"threads": args.threads, "rows": rows}


def bench_cuda(args) -> dict:
    device = torch.device(args.device)
    data = args.data or (str(ARCHIVE) if ARCHIVE.exists() else None)
    ds = load_dataset_for(TrainConfig(dataset="cifar10", data=data))
    config = TrainConfig(
        dataset="cifar10", epochs=args.epochs, batch_size=args.gpu_batch, device=device.type, compile=args.compile
    )
    result, wall, _ = trainer_epochs(64, ds, config)
    train_s = [r["seconds"] for r in result.history]
    epoch_s = [r["seconds"] + r["eval_seconds"] for r in result.history]
    steady = train_s[1:] or train_s
    batches = plain_batches(ds, args.gpu_batch, device)
    fast = device.type == "cuda"  # bf16 autocast + channels_last, as the trainer uses on CUDA
    plain_loop(64, batches[:20], device, fast=fast)  # warm-up (cuDNN autotuning)
    plain, _ = plain_loop(64, batches, device, fast=fast)
    row = {
        "dataset": ds.name,
        "dataset_sha256": ds.sha256,
        "model": "resnet18",
        "width": 64,
        "batch": args.gpu_batch,
        "epochs": args.epochs,
        "compile": args.compile,
        "train_seconds_per_epoch": train_s,
        "epoch_seconds_with_eval": epoch_s,
        "seconds_per_epoch_median": statistics.median(steady),
        "trainer_images_per_s": [r["images_per_s"] for r in result.history],
        "plain_images_per_s": plain,
        "ratio": statistics.median(r["images_per_s"] for r in result.history[1:] or result.history) / plain,
        "test_acc": result.test_acc,
        "trainer_call_s": wall,
        "target_seconds_per_epoch": 3.0,
    }
    row["meets_target"] = row["seconds_per_epoch_median"] <= 3.0
    print(f"\nCIFAR-10 ResNet-18 on {device_name(device)}, batch {args.gpu_batch}, compile={args.compile}")
    print(f"seconds/epoch (training, epochs 2..): {row['seconds_per_epoch_median']:.2f}  (target <= 3)")
    fmt = ", ".join
    print(f"per epoch: {fmt(f'{s:.2f}' for s in train_s)}; with evaluation: {fmt(f'{s:.2f}' for s in epoch_s)}")
    print(f"trainer / plain bf16 loop images/s: {row['ratio']:.3f}")
    print(f"test accuracy after {args.epochs} epochs: {result.test_acc:.4f}")
    return {"rows": [row]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="CPU: ResNet-18 widths (64 = paper)")
    p.add_argument("--steps", type=int, default=5, help="CPU: batches per repetition (>= 3)")
    p.add_argument("--reps", type=int, default=3, help="CPU: recorded repetitions (plus one warm-up)")
    p.add_argument("--batch", type=int, default=128, help="CPU: batch size")
    p.add_argument("--threads", type=int, default=2, help="CPU: torch.set_num_threads")
    p.add_argument("--data", default=None, help="GPU: CIFAR-10 root or ImageFolder archive")
    p.add_argument("--epochs", type=int, default=4, help="GPU: epochs (the first is warm-up)")
    p.add_argument("--gpu-batch", type=int, default=512, help="GPU: global batch")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the model")
    args = p.parse_args()

    t0 = time.perf_counter()
    out = bench_cpu(args) if args.device == "cpu" else bench_cuda(args)
    path = RESULTS / ("train.json" if args.device == "cpu" else "train_cuda.json")
    write_json(path, {**out, **provenance(args.device, seed=SEED, wall_s=time.perf_counter() - t0)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

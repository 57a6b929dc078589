"""Data pipeline speed: ImageFolder decode, cached load, and Loader throughput against simpler baselines.

Run: ``.venv/bin/python benchmarks/bench_data.py [--archive ../shared/data/cifar10-jpeg.tar.gz] [--reps 5]``.
Writes ``benchmarks/results/data.json``.

1. Decode: the first load of the CIFAR-10 JPEG ImageFolder archive into a fresh cache folder (read the tar, decode
   60,000 JPEGs with Pillow on one core, write the verified cache), then the cached load (median of ``--reps``).
2. Loader: images/s of one epoch of the CIFAR-10 training set at batch 128 (ResNet-sized batches), interleaved
   repetitions, medians, at each of ``--threads`` (1 and 2 by default: on a shared, oversubscribed CPU the
   two-thread gather kernels can be much slower than one thread):
   - ``loader+augment``: :class:`smoothcompress.Loader` with random crop (4-pixel zero padding) and flip;
   - ``loader``: the same without augmentation (gather + normalise only);
   - ``per-sample loop``: the same crop, flip and normalisation done sample by sample in Python, as a per-sample
     transform pipeline would do it (the baseline the vectorised augmentation replaces).
   The loader's cost is also put next to one training step of the CIFAR ResNet-18 (SGD, batch 128) on the same
   device, to show what share of an epoch it takes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import device_name, provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "data.json"
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository (``../shared/...`` for data beside it), so results name no machine."""
    return Path(os.path.relpath(Path(path).resolve(), REPO)).as_posix()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_sample_epoch(x, y, batch, mean, std, seed, device, padding=4):
    """Baseline: the loader's work done one sample at a time in Python. Returns the number of images."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    m = torch.tensor(mean, device=device).view(-1, 1, 1)
    s = torch.tensor(std, device=device).view(-1, 1, 1)
    h, w = x.shape[-2:]
    n = 0
    for b in range(len(y) // batch):
        images = []
        for i in order[b * batch : (b + 1) * batch].tolist():
            img = F.pad(x[i], (padding,) * 4)
            oy, ox = torch.randint(2 * padding + 1, (2,), generator=g).tolist()
            img = img[:, oy : oy + h, ox : ox + w]
            if torch.rand((), generator=g) < 0.5:
                img = img.flip(-1)
            images.append((img.float() / 255 - m) / s)
        xb, yb = torch.stack(images), y[order[b * batch : (b + 1) * batch].to(device)]
        n += min(len(xb), len(yb))
    _sync(device)
    return n


def loader_epoch(loader: sc.Loader, epoch: int, device) -> int:
    loader.set_epoch(epoch)
    n = 0
    for _, yb in loader:
        n += len(yb)
    _sync(device)
    return n


def train_step_seconds(device, batch: int, reps: int) -> float:
    """Median seconds of one SGD step of the full-width CIFAR ResNet-18 on random data."""
    model = sc.create_model("resnet18").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for _ in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def loader_throughput(ds: sc.Dataset, device: torch.device, args) -> dict:
    """Images/s of the loader with and without augmentation and of the per-sample baseline, interleaved."""
    kw = dict(train=True, mean=ds.mean, std=ds.std, seed=0, device=device)
    aug = sc.Loader(ds.x_train, ds.y_train, args.batch, augment=True, **kw)
    plain = sc.Loader(ds.x_train, ds.y_train, args.batch, augment=False, **kw)
    sub = args.baseline_batches * args.batch
    x_dev, y_dev = ds.x_train[:sub].to(device), ds.y_train[:sub].to(device)
    rates: dict[str, list[float]] = {"loader+augment": [], "loader": [], "per-sample loop": []}
    loader_epoch(aug, 0, device)  # warm-up
    for rep in range(args.reps):
        for name, fn in (
            ("loader+augment", lambda rep=rep: loader_epoch(aug, rep, device)),
            ("loader", lambda rep=rep: loader_epoch(plain, rep, device)),
            (
                "per-sample loop",
                lambda rep=rep: per_sample_epoch(x_dev, y_dev, args.batch, ds.mean, ds.std, rep, device),
            ),
        ):
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    step_s = train_step_seconds(device, args.batch, args.step_reps) if args.step_reps else None
    where = device_name(device)
    print(f"\nLoader throughput, batch {args.batch}, {where} (median of {args.reps}):")
    print(f"{'variant':18s}{'images/s':>14s}{'vs loop':>10s}{'ms/batch':>10s}{'% of step':>11s}")
    rows: dict = {"device": where, "resnet18_step_s": step_s}
    for name, rate in medians.items():
        ms = 1000 * args.batch / rate
        share = 100 * ms / 1000 / step_s if step_s else None
        rows[name] = {
            "images_per_s": rate,
            "ratio_vs_per_sample_loop": rate / medians["per-sample loop"],
            "ms_per_batch": ms,
            "percent_of_resnet18_step": share,
            "all_images_per_s": rates[name],
        }
        share_txt = f"{share:10.2f}%" if share is not None else f"{'-':>11s}"
        print(f"{name:18s}{rate:14,.0f}{rate / medians['per-sample loop']:9.1f}x{ms:10.2f}{share_txt}")
    if step_s:
        print(f"ResNet-18 training step (batch {args.batch}): {step_s * 1000:.0f} ms")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=ARCHIVE, help="ImageFolder .tar.gz (CIFAR-10 JPEG copy)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each timed variant (medians reported)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts tried on CPU")
    ap.add_argument("--baseline-batches", type=int, default=40, help="batches of the slow per-sample baseline")
    ap.add_argument("--step-reps", type=int, default=2, help="ResNet-18 training steps timed (0 to skip)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if not args.archive.exists():
        raise SystemExit(f"{args.archive} is absent; see ../shared/data/README.md or pass --archive")
    wall = time.perf_counter()

    # 1. decode and cached load
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        ds = sc.load_dataset(str(args.archive), root=cache)
        decode_s = time.perf_counter() - t
        cached = []
        for _ in range(args.reps):
            t = time.perf_counter()
            sc.load_dataset(str(args.archive), root=cache)
            cached.append(time.perf_counter() - t)
        cache_bytes = sum(p.stat().st_size for p in Path(cache).rglob("*.npz"))
    n_images = len(ds.y_train) + len(ds.y_test)
    print(f"{ds}")
    print(f"decode (first load): {decode_s:.2f} s for {n_images} images ({n_images / decode_s:,.0f} images/s)")
    cached_s = statistics.median(cached)
    print(f"cached load:         {cached_s:.2f} s (median of {args.reps}), cache {cache_bytes / 1e6:.0f} MB")

    # 2. loader throughput, interleaved, at each thread count
    loader_rows = {}
    for threads in args.threads if device.type == "cpu" else [None]:
        if threads is not None:
            torch.set_num_threads(threads)
        loader_rows[str(threads or device.type)] = loader_throughput(ds, device, args)

    write_json(
        args.out,
        {
            "provenance": provenance(
                device,
                dataset=ds.name,
                dataset_sha256=ds.sha256,
                seed=0,
                wall_time_s=time.perf_counter() - wall,
                threads=args.threads,
                load_average=os.getloadavg(),  # other processes sharing the CPU inflate every figure here
            ),
            "archive": repo_relative(args.archive),
            "images": n_images,
            "decode_s": decode_s,
            "decode_images_per_s": n_images / decode_s,
            "cached_load_s": statistics.median(cached),
            "cached_load_all_s": cached,
            "cache_bytes": cache_bytes,
            "batch": args.batch,
            "reps": args.reps,
            "loader": loader_rows,
        },
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

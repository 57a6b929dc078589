"""Which truncation and rank allocation keep the most accuracy? SVD compression of trained models, no fine-tuning.

Decides two defaults of ``smoothcompress.compress`` on trained models:

* ``bn_aware``: truncate ``diag(gamma/sigma) W`` (what the network computes before BatchNorm's shift) or ``W``;
* ``allocation="global"`` (minimise the sum over layers of ``-log`` kept energy) against ``"global-linear"`` (the
  sum of lost energy fractions), with ``"uniform"`` and ``"energy"`` for reference.

Models, trained here with a minimal loop (this benchmark does not depend on the training module) and cached in
``--cache`` so that reruns only compress:

* ``cnn`` (width 32) on scikit-learn's 8x8 digits, 3 seeds (about a minute each on 2 loaded cores);
* ``resnet20`` (width 8) on a class-balanced 10,000-image subset of ../shared/data/cifar10-jpeg.tar.gz, 8 epochs,
  tested on 2,000 test images (skipped with ``--quick`` or when the archive is absent).

Run: ``.venv/bin/python benchmarks/bench_allocation.py [--quick]``; writes ``benchmarks/results/allocation.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import smoothcompress as sc
from smoothcompress.files import sha256_file, write_json
from smoothcompress.provenance import provenance

ROOT = Path(__file__).resolve().parent
CIFAR = ROOT.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
RATES = {"cnn/digits": (0.3, 0.4, 0.5, 0.6, 0.7), "resnet20w8/cifar10-subset": (0.2, 0.3, 0.4, 0.5, 0.6)}
# (allocation, bn_aware); "global-same-ranks": the ranks of plain "global", truncated BN-aware, which isolates the
# effect of the truncation from that of the allocation
VARIANTS = (
    ("global", False),
    ("global", True),
    ("global-same-ranks", True),
    ("global-linear", False),
    ("global-linear", True),
    ("uniform", False),
    ("energy", False),
)


def digits(seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x = (x - x.mean()) / x.std()
    n_test = 450
    return x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]]


def cifar_subset(n_train: int, n_test: int):
    """Decode the first n/10 images of each class from the JPEG archive; returns normalised float tensors."""
    from PIL import Image

    want = {"train": n_train // 10, "test": n_test // 10}
    taken: dict[tuple[str, str], int] = {}
    xs: dict[str, list] = {"train": [], "test": []}
    ys: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(CIFAR, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            split, cls = parts[-3], parts[-2]
            if taken.get((split, cls), 0) >= want[split]:
                continue
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            xs[split].append(np.asarray(img))
            ys[split].append(cls)
    classes = sorted(set(ys["train"]))
    out = []
    for split in ("train", "test"):
        x = torch.tensor(np.stack(xs[split])).permute(0, 3, 1, 2).float() / 255.0
        y = torch.tensor([classes.index(c) for c in ys[split]])
        out += [x, y]
    mean, std = out[0].mean((0, 2, 3), keepdim=True), out[0].std((0, 2, 3), keepdim=True)
    out[0], out[2] = (out[0] - mean) / std, (out[2] - mean) / std
    return out


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop (4-pixel padding) and horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    x = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def trained(cache: Path | None, key: str, build, fit) -> tuple[torch.nn.Module, float | None]:
    """A trained model from ``cache/key.safetensors`` if present, else ``fit(build())``, saved there.

    Returns the model and the training time in seconds (``None`` when it came from the cache).
    """
    path = cache / f"{key}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        return sc.load(path), None
    model = build()
    t = time.time()
    fit(model)
    seconds = round(time.time() - t, 1)
    if path is not None:
        sc.save(model, path)
    return model.eval(), seconds


def train(model, x, y, epochs: int, batch: int, lr: float, seed: int, aug: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            xb = augment(x[idx], gen) if aug else x[idx]
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def logits(model, x, batch: int = 500) -> torch.Tensor:
    return torch.cat([model.eval()(x[i : i + batch]) for i in range(0, len(x), batch)])


def evaluate(name: str, model, x_test, y_test, seed: int) -> list[dict]:
    ref = logits(model, x_test)
    dense_acc = float((ref.argmax(1) == y_test).float().mean())
    rows = [{"model": name, "seed": seed, "rate": 0.0, "variant": "dense", "acc": dense_acc, "logit_rel_err": 0.0}]
    for rate in RATES[name]:
        for allocation, bn_aware in VARIANTS:
            if allocation == "global-same-ranks":
                small = sc.compress(model, None, ranks=sc.plan_ranks(model, rate, "global"), bn_aware=bn_aware)
            else:
                small = sc.compress(model, rate, allocation, bn_aware=bn_aware)
            out = logits(small, x_test)
            rows.append(
                {
                    "model": name,
                    "seed": seed,
                    "rate": rate,
                    "variant": f"{allocation}{' bn-aware' if bn_aware else ''}",
                    "achieved_rate": small.sc_compression.rate_achieved,
                    "acc": float((out.argmax(1) == y_test).float().mean()),
                    "logit_rel_err": float((out - ref).norm() / ref.norm()),
                }
            )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean accuracy and logit error per (model, rate, variant) over seeds."""
    out = []
    for key in sorted({(r["model"], r["rate"], r["variant"]) for r in rows}, key=lambda k: (k[0], k[1])):
        sel = [r for r in rows if (r["model"], r["rate"], r["variant"]) == key]
        out.append(
            {
                "model": key[0],
                "rate": key[1],
                "variant": key[2],
                "seeds": len(sel),
                "acc": float(np.mean([r["acc"] for r in sel])),
                "logit_rel_err": float(np.mean([r["logit_rel_err"] for r in sel])),
            }
        )
    return out


def verdicts(summary: list[dict]) -> dict:
    """Mean accuracy difference (in points) of each decision, per model, over its rates."""

    def acc(model, rate, variant):
        return next(s["acc"] for s in summary if (s["model"], s["rate"], s["variant"]) == (model, rate, variant))

    out = {}
    for model, rates in RATES.items():
        if not any(s["model"] == model for s in summary):
            continue
        pairs = {
            "bn_aware_minus_plain (global)": ("global bn-aware", "global"),
            "bn_aware_minus_plain (same ranks)": ("global-same-ranks bn-aware", "global"),
            "global_minus_global_linear": ("global", "global-linear"),
            "global_minus_uniform": ("global", "uniform"),
        }
        out[model] = {
            k: {str(r): round(100 * (acc(model, r, a) - acc(model, r, b)), 2) for r in rates}
            for k, (a, b) in pairs.items()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument("--seeds", type=int, default=3, help="digits training seeds")
    ap.add_argument("--cifar-train", type=int, default=10000, help="CIFAR-10 training images (class-balanced)")
    ap.add_argument("--cifar-epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "allocation.json"))
    ap.add_argument("--cache", default="/tmp/smoothcompress-bench-models", help="trained models are kept here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows, datasets, train_s = [], {"digits": "sklearn.datasets.load_digits"}, {}

    cache = Path(args.cache) if args.cache else None
    x, y, xt, yt = digits()
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model, train_s[f"cnn/digits/seed{seed}"] = trained(
            cache,
            f"cnn-digits-seed{seed}",
            lambda: sc.create_model("cnn", width=32),
            lambda m, seed=seed: train(m, x, y, epochs=30, batch=64, lr=0.05, seed=seed, aug=False),
        )
        rows += evaluate("cnn/digits", model, xt, yt, seed)
        print(
            f"cnn seed {seed}: dense acc {rows[-len(RATES['cnn/digits']) * len(VARIANTS) - 1]['acc']:.4f}", flush=True
        )

    if not args.quick and CIFAR.is_file():
        where = os.path.relpath(CIFAR, ROOT.parent)  # relative to the repository: no machine paths in results
        datasets["cifar10-jpeg"] = {"path": where, "sha256": sha256_file(CIFAR), "train": args.cifar_train,
                                    "test": 2000}  # fmt: skip
        x, y, xt, yt = cifar_subset(args.cifar_train, 2000)
        torch.manual_seed(0)
        model, train_s["resnet20w8/cifar10-subset/seed0"] = trained(
            cache,
            f"resnet20w8-cifar{args.cifar_train}-e{args.cifar_epochs}-seed0",
            lambda: sc.create_model("resnet20", width=8),
            lambda m: train(m, x, y, epochs=args.cifar_epochs, batch=128, lr=0.1, seed=0, aug=True),
        )
        model_name = "resnet20w8/cifar10-subset"
        rows += evaluate(model_name, model, xt, yt, 0)
        print(f"resnet20 w8: dense acc {rows[-len(RATES[model_name]) * len(VARIANTS) - 1]['acc']:.4f}", flush=True)

    summary = summarise(rows)
    names = [("global" if a == "global" else a) + (" bn-aware" if bn else "") for a, bn in VARIANTS]
    for model in RATES:
        if not any(r["model"] == model for r in summary):
            continue
        print(f"\n{model}: test accuracy after compression (mean over seeds), no fine-tuning")
        print(f"{'rate':>5} " + " ".join(f"{n:>16}" for n in names))
        for rate in RATES[model]:
            accs = {s["variant"]: s["acc"] for s in summary if s["model"] == model and s["rate"] == rate}
            print(f"{rate:>5.2f} " + " ".join(f"{accs[n]:>16.4f}" for n in names))
    decisions = verdicts(summary)
    print("\naccuracy differences in points, per rate:")
    for model, d in decisions.items():
        for k, v in d.items():
            print(f"  {model:<26} {k:<36} {v}")
    wall = time.time() - t0
    write_json(
        args.out,
        {
            "benchmark": "allocation",
            "question": "which truncation (bn_aware) and rank allocation keep the most accuracy without fine-tuning?",
            "decisions": decisions,
            "summary": summary,
            "rows": rows,
            "train_seconds": train_s,
            "datasets": datasets,
            "provenance": provenance(
                "cpu", seed=list(range(args.seeds)), wall_time_s=round(wall, 1), threads=args.threads
            ),  # fmt: skip
        },
    )
    print(f"wrote {args.out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()

"""How long a CP fit of one ResNet-18 3x3 conv takes, with TensorLy's default products and with planned einsums.

CP-ALS multiplies the kernel by the other modes' factors at every step. TensorLy's default tensor algebra ("core")
builds their Khatri-Rao product first; with opt_einsum installed :func:`smoothcompress.tensorfactor.decompose_cp`
runs TensorLy's "einsum" tensor algebra instead (:func:`smoothcompress.tensorfactor.cp_contraction`). For each
square 3x3 conv of the CIFAR ResNet-18 at widths 16 to 64 (16 to 512 channels), at the rank that removes 70% of
the layer's parameters, this script times one fit with each (the fit cache cleared between them, one thread) and
records both times, their ratio and both fits' kept energy (the same fit up to float rounding), each path forced
whatever the size; the library picks einsum from :data:`smoothcompress.tensorfactor.EINSUM_FROM` Khatri-Rao
entries, and ``khatri_rao_entries`` shows where each layer falls. Fits of the default above
``--max-core-channels`` are left out: at 512 channels one takes minutes. The weights are random (a fit's time
depends on the shape and the rank, little on the values).

Run: ``.venv/bin/python benchmarks/bench_cp_fit.py [--max-core-channels 256]``. Writes
``benchmarks/results/cp_fit.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from smoothcompress import tensorfactor
from smoothcompress.files import write_json
from smoothcompress.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "cp_fit.json"
CHANNELS = (16, 32, 64, 128, 256, 512)  # the 3x3 convs of ResNet-18 at widths 16 (16-128) to 64 (64-512)
KEEP = 0.3  # the fraction of a layer's parameters the CP rank keeps: 70% fewer, the paper's headline rate


def fit(channels: int, rank: int, contraction: str) -> dict:
    """One CP fit of a random (channels, channels, 3, 3) kernel at ``rank`` with TensorLy's ``contraction``, forced
    whatever the layer's size (fits are cached per contraction, so the two timings fit afresh)."""
    torch.backends.opt_einsum.enabled = contraction == "einsum"
    tensorfactor.EINSUM_FROM = 0  # every size by einsum while planning is enabled
    w = torch.randn(channels, channels, 3, 3, generator=torch.Generator().manual_seed(channels)) / (9 * channels) ** 0.5
    start = time.perf_counter()
    factors = tensorfactor.decompose_cp(w, rank)
    return {"seconds": time.perf_counter() - start, "energy": factors.energy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-core-channels", type=int, default=256, help="largest layer timed with the default")
    args = parser.parse_args()
    if not torch.backends.opt_einsum.is_available():
        raise SystemExit("opt_einsum is not installed: pip install -e '.[tensor]'")
    torch.set_num_threads(1)
    default_from = tensorfactor.EINSUM_FROM
    for contraction in ("einsum", "core"):  # imports and first-call set-up out of the timings
        fit(8, 4, contraction)
    t0, rows = time.perf_counter(), []
    for c in CHANNELS:
        rank = max(1, int(KEEP * c * c * 9 / tensorfactor.tensor_params((c, c, 3, 3), "cp", 1)))
        row = {"channels": c, "rank": rank, "khatri_rao_entries": c * c * 3 * rank, "einsum": fit(c, rank, "einsum")}
        if c <= args.max_core_channels:
            row["core"] = fit(c, rank, "core")
            row["core_over_einsum"] = row["core"]["seconds"] / row["einsum"]["seconds"]
        rows.append(row)
        core = f"{row['core']['seconds']:8.2f} s  x{row['core_over_einsum']:5.1f}" if "core" in row else "(not timed)"
        print(f"{c:4d} channels, rank {rank:4d}: einsum {row['einsum']['seconds']:7.2f} s  core {core}", flush=True)
    torch.backends.opt_einsum.enabled, tensorfactor.EINSUM_FROM = True, default_from
    out = {
        "provenance": provenance("cpu", threads=1, wall_s=time.perf_counter() - t0, loadavg=os.getloadavg()),
        "keep": KEEP,
        "einsum_from": default_from,
        "rows": rows,
    }
    write_json(RESULTS, out)
    print(f"wrote {RESULTS.relative_to(RESULTS.parents[2])}")


if __name__ == "__main__":
    main()

"""Write a ranks file (:mod:`smoothcompress.rankfile`) from a trained run: the factorized architecture that
``compress`` picks on it at each rate, for training that architecture from scratch (``TrainConfig.lowrank_ranks``,
the ``cifar10-cpu-lowrank`` preset).

Run: ``.venv/bin/python scripts/plan_ranks.py RUN --rates 0.7 0.8 0.9 --out results/cifar10-cpu-lowrank/ranks.json``
where RUN is a trained run folder (``model.safetensors`` and ``config.toml``). The file records the run's settings
and the checkpoint's sha256.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import smoothcompress as sc
from smoothcompress.files import sha256_file
from smoothcompress.provenance import provenance
from smoothcompress.rankfile import plan_rank_file, write_ranks
from smoothcompress.study.training import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="trained run folder (model.safetensors, config.toml)")
    p.add_argument("--rates", nargs="+", type=float, required=True, help="fractions of parameters removed")
    p.add_argument("--out", type=Path, required=True, help="the ranks file to write")
    args = p.parse_args()
    config = TrainConfig.from_toml(args.run / "config.toml")
    model = sc.load(args.run / "model.safetensors")
    source = {
        "run": args.run.name,
        "checkpoint_sha256": sha256_file(args.run / "model.safetensors"),
        **{k: getattr(config, k) for k in ("model", "width", "dataset", "reg", "weight", "seed", "epochs")},
        **{k: getattr(config, k) for k in ("reg_refresh", "reg_target_rate", "val_fraction", "val_seed")},
        **provenance(),
    }
    ranks = plan_rank_file(model, args.rates)
    path = write_ranks(args.out, ranks, source=source)
    for rate, layers in ranks.items():
        small = sc.compress(model, ranks=layers)
        print(f"rate {rate}: {len(layers)} layers factorized, {sc.count_params(small):,} parameters")
    print(f"ranks file: {path}")


if __name__ == "__main__":
    main()

"""A sweep's plan: what each shard trains and compresses, and how far each run has got, without running anything.

:func:`sweep_plan` reads the sweep file (its ``extends`` chain merged), deals the training runs into shards as
:func:`smoothcompress.study.experiment.sweep` does, and looks into the output folder for what is already done: the
epochs of each run (its ``metrics.jsonl``) and its finished cells (the shard's ``results.jsonl``). Nothing is
trained, evaluated or locked, so it can be asked while the shards run. ``smoothcompress sweep CONFIG --plan`` prints
:func:`plan_table`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from smoothcompress.errors import ConfigError
from smoothcompress.files import read_jsonl
from smoothcompress.study.experiment import SweepConfig, parse_shard, shard_folder
from smoothcompress.study.progress import training_progress
from smoothcompress.study.results import cell_key
from smoothcompress.study.training import TrainConfig

__all__ = ["sweep_plan", "plan_table"]


def sweep_plan(
    config: SweepConfig | str | os.PathLike,
    out: str | os.PathLike | None = None,
    shard: str | tuple[int, int] | None = None,
) -> list[dict]:
    """Every training run of a sweep, with its shard and what is done of it.

    Parameters
    ----------
    config, out
        The sweep and its output folder, as :func:`~smoothcompress.study.experiment.sweep` takes them.
    shard : "i/n" or (i, n), optional
        Only the runs of shard i of n. Default: the shards whose folders ``out`` holds (``shard-i-of-n``, all of one
        n), every shard of that n listed; else the whole grid unsharded.

    Returns
    -------
    list of dict
        One per run, in shard then file order: ``shard`` (``"i/n"``, ``""`` unsharded), ``run`` (its tag),
        ``folder`` (the shard's folder), ``reg``, ``weight``, ``seed``, ``variant`` (text, ``""`` for none),
        ``epochs_done``, ``epochs`` (planned), ``cells_done`` and ``cells`` (the dense row plus every method at
        every rate).

    Raises
    ------
    ValueError
        A bad config or shard, or an ``out`` holding shard folders of different counts (``shard-1-of-2`` beside
        ``shard-1-of-3``) when no shard is given.
    """
    cfg = config if isinstance(config, SweepConfig) else SweepConfig.from_toml(config)
    root = Path(out) if out is not None else cfg.out
    shards = [parse_shard(shard)] if shard is not None else _shards_in(root)
    cells = [("dense", 0.0), *((m.label, float(r)) for m in cfg.methods for r in cfg.rates)]
    plan = []
    for i, n in shards:
        folder = shard_folder(root, (i, n))
        done = {cell_key(r) for r in read_jsonl(folder / "results.jsonl")}
        epochs_done = {e["run"]: e["epochs_done"] for e in training_progress(folder) if not e["shard"]}
        for spec in cfg.shard_runs((i, n)):
            tag = spec.tag(cfg.train)
            plan.append(
                {
                    "shard": f"{i}/{n}" if n > 1 else "",
                    "run": tag,
                    "folder": str(folder),
                    "reg": spec.reg,
                    "weight": spec.weight,
                    "seed": spec.seed,
                    "variant": spec.variant_name(),
                    "epochs_done": epochs_done.get(tag, 0),
                    "epochs": TrainConfig.from_dict({**cfg.train, **spec.train_overrides()}).epochs,
                    "cells_done": sum((tag, label, rate) in done for label, rate in cells),
                    "cells": len(cells),
                }
            )
    return plan


def _shards_in(root: Path) -> list[tuple[int, int]]:
    """Every shard ``(i, n)`` of the one count n whose folders ``root`` holds; ``[(1, 1)]`` when it holds none."""
    counts = {int(m[1]) for p in root.glob("shard-*-of-*") if (m := re.fullmatch(r"shard-\d+-of-(\d+)", p.name))}
    if not counts:
        return [(1, 1)]
    if len(counts) > 1:
        raise ConfigError(
            f"{root} holds shard folders of {' and '.join(map(str, sorted(counts)))} shards; "
            "name the shard to plan (--shard I/N)"
        )
    (n,) = counts
    return [(i, n) for i in range(1, n + 1)]


def plan_table(plan: list[dict]) -> str:
    """Markdown table of :func:`sweep_plan`: one row per run, its shard, penalty, seed, variant, epochs trained of
    those planned and cells done of the total."""
    lines = [
        "| shard | run | penalty | seed | variant | epochs | cells |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in plan:
        penalty = p["reg"] if p["reg"] == "none" else f"{p['reg']} {p['weight']:g}"
        lines.append(
            f"| {p['shard'] or '—'} | {p['run']} | {penalty} | {p['seed']} | {p['variant'] or '—'} | "
            f"{p['epochs_done']} / {p['epochs']} | "
            f"{p['cells_done']} / {p['cells']} |"
        )
    return "\n".join(lines)

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

from smoothcompress.errors import ConfigError, first_line
from smoothcompress.files import read_jsonl
from smoothcompress.study.experiment import SweepConfig, parse_shard, shard_folder
from smoothcompress.study.progress import training_progress
from smoothcompress.study.results import cell_key
from smoothcompress.study.training import TrainConfig, duration, settings_changes, time_left

__all__ = ["sweep_plan", "plan_table"]


def sweep_plan(
    config: SweepConfig | str | os.PathLike,
    out: str | os.PathLike | None = None,
    shard: str | tuple[int, int] | None = None,
) -> list[dict]:
    """Every training run of a sweep, with its shard and what is done of it, as :func:`sweep` would find it.

    Parameters
    ----------
    config, out
        The sweep and its output folder, as :func:`~smoothcompress.study.experiment.sweep` takes them.
    shard : "i/n", (i, n) or "all/n", optional
        Only the runs of shard i of n, or the runs of every shard of n (to see how n shards would deal the grid
        before starting them). Default: the shards whose folders ``out`` holds (``shard-i-of-n``, all of one
        n), every shard of that n listed, and the unsharded sweep too when ``out`` holds its runs or rows; the
        whole grid unsharded when ``out`` holds no shard folder.

    Returns
    -------
    list of dict
        One per run, in shard then file order: ``shard`` (``"i/n"``, ``""`` unsharded), ``run`` (its tag), ``folder``
        (the shard's folder), ``model`` (name and width, ``"resnet18 w64"``; the name alone at the default width),
        ``reg``, ``weight``, ``seed``, ``variant`` (text, ``""`` for none), ``epochs_done`` (from its epoch rows; all
        planned once its model is written or every cell and its spectra row are done), ``epochs`` (planned),
        ``training_left_s`` (seconds of training still to go at the pace of its last epochs,
        :func:`~smoothcompress.study.training.time_left`; ``None`` before its first epoch, once trained, and for a run
        the sweep would refuse), ``cells_done`` and ``cells`` (the dense row plus every method at every rate), and
        ``status``: ``""`` when the sweep would go on with the run, else why it would not: ``"settings differ (lr: 0.4
        -> 0.2)"`` (its run folder was trained otherwise), ``"config.toml unreadable (...)"``, or ``"the sweep refuses
        this folder: it holds rows of ..."`` (rows of a run the grid now deals to another shard). Run folders and rows
        of runs the shard does not own come after its runs, with ``None`` for what only the grid tells and the status
        ``"another shard's run (its rows stop the sweep)"``, ``"another shard's run (left alone)"`` or ``"not in this
        grid (the sweep leaves it alone)"``.

    Raises
    ------
    ValueError
        A bad config or shard; an ``out`` holding shard folders of different counts (``shard-1-of-2`` beside
        ``shard-1-of-3``) or of more shards than the grid has runs, when no shard is given.
    """
    cfg = config if isinstance(config, SweepConfig) else SweepConfig.from_toml(config, out=out)
    root = Path(out) if out is not None else cfg.out
    every = re.fullmatch(r"\s*all\s*/\s*(\d+)\s*", shard, re.IGNORECASE) if isinstance(shard, str) else None
    if every is not None:
        n = int(every[1])
        if not 1 <= n <= len(cfg.runs):
            raise ConfigError(f"shard {shard!r}: N must lie in 1..{len(cfg.runs)}, the number of training runs")
        shards = [(i, n) for i in range(1, n + 1)]
    else:
        shards = [parse_shard(shard)] if shard is not None else _shards_in(root, len(cfg.runs))
    cells = [("dense", 0.0), *((m.label, float(r)) for m in cfg.methods for r in cfg.rates)]
    return [entry for i, n in shards for entry in _shard_plan(cfg, shard_folder(root, (i, n)), (i, n), cells)]


def _shard_plan(cfg: SweepConfig, folder: Path, shard: tuple[int, int], cells: list[tuple[str, float]]) -> list[dict]:
    """The :func:`sweep_plan` entries of shard ``(i, n)`` in ``folder``: its own runs, then the other runs the folder
    holds; ``cells`` are the (label, rate) cells of every run."""
    rows = read_jsonl(folder / "results.jsonl")
    done = {cell_key(r) for r in rows}
    with_rows = {r["run"] for r in rows}
    with_spectra = {r["run"] for r in read_jsonl(folder / "spectra.jsonl")}
    progress = {e["run"]: e for e in training_progress(folder) if not e["shard"]}
    name = f"{shard[0]}/{shard[1]}" if shard[1] > 1 else ""
    grid = {s.tag(cfg.train) for s in cfg.runs}
    owned = {spec.tag(cfg.train): spec for spec in cfg.shard_runs(shard)}
    others = sorted(with_rows & (grid - set(owned)))  # rows that make the sweep refuse the folder
    refused = f"the sweep refuses this folder: it holds rows of {', '.join(others)}" if others else ""
    plan = []
    for tag, spec in owned.items():
        tconf = TrainConfig.from_dict({**cfg.train, **spec.train_overrides()})
        entry, run_dir = progress.get(tag), folder / "runs" / tag
        cells_done = sum((tag, label, rate) in done for label, rate in cells)
        all_cells = cells_done == len(cells) and tag in with_spectra
        trained = (run_dir / "model.safetensors").is_file() or all_cells or bool(entry and entry["finished"])
        status = refused or _status(run_dir / "config.toml", tconf)
        planned = max((r.get("epochs") or 0 for r in rows if r["run"] == tag), default=0) or tconf.epochs
        left = time_left(entry["history"], tconf.epochs) if entry and not trained and not status else 0.0
        plan.append(
            {
                "shard": name,
                "run": tag,
                "folder": str(folder),
                "model": tconf.model if tconf.width is None else f"{tconf.model} w{tconf.width}",
                "reg": spec.reg,
                "weight": spec.weight,
                "seed": spec.seed,
                "variant": spec.variant_name(),
                "epochs_done": entry["epochs_done"] if entry else planned if trained else 0,
                "epochs": tconf.epochs,
                "training_left_s": left or None,
                "cells_done": cells_done,
                "cells": len(cells),
                "status": status,
            }
        )
    for tag in sorted((set(progress) | with_rows) - set(owned)):
        if tag not in grid:
            status = "not in this grid (the sweep leaves it alone)"
        else:
            status = "another shard's run" + (" (its rows stop the sweep)" if tag in with_rows else " (left alone)")
        plan.append(
            {
                "shard": name,
                "run": tag,
                "folder": str(folder),
                **dict.fromkeys(("model", "reg", "weight", "seed", "variant", "epochs", "training_left_s"), None),
                "epochs_done": progress[tag]["epochs_done"] if tag in progress else 0,
                "cells_done": sum(r == tag for r, _, _ in done),
                "cells": len(cells),
                "status": status,
            }
        )
    return plan


def _status(saved: Path, config: TrainConfig) -> str:
    """Why a sweep would refuse the run folder of ``saved`` (its ``config.toml``) under ``config``; ``""`` if not."""
    if not saved.is_file():
        return ""
    try:
        changes = settings_changes(TrainConfig.from_toml(saved).to_dict(), config, saved)
    except ConfigError as e:
        return f"config.toml unreadable ({first_line(e)})"
    return f"settings differ ({'; '.join(changes)})" if changes else ""


def _shards_in(root: Path, runs: int) -> list[tuple[int, int]]:
    """The shards a folder holds: every shard ``(i, n)`` of the one count n of its ``shard-i-of-n`` folders, after
    ``(1, 1)`` when ``root`` also holds an unsharded sweep's runs or rows; ``[(1, 1)]`` when it holds no shard."""
    pattern = re.compile(r"shard-([1-9]\d*)-of-([1-9]\d*)")
    counts = {
        int(m[2]) for p in root.glob("shard-*-of-*") if (m := pattern.fullmatch(p.name)) and int(m[1]) <= int(m[2])
    }
    unsharded = (root / "results.jsonl").is_file() or (root / "runs").is_dir()
    if not counts:
        return [(1, 1)]
    if len(counts) > 1:
        raise ConfigError(
            f"{root} holds shard folders of {' and '.join(map(str, sorted(counts)))} shards; "
            "name the shard to plan (--shard I/N)"
        )
    (n,) = counts
    if n > runs:
        raise ConfigError(
            f"{root} holds shard-*-of-{n} folders, but this grid has {runs} training run(s): the grid changed, "
            "or --out names another sweep's folder"
        )
    return [(1, 1)] * unsharded + [(i, n) for i in range(1, n + 1)]


def _penalty(entry: dict) -> str:
    """The penalty of a plan entry as the table shows it: ``none``, ``nuclear 0.001``, or ``—`` outside the grid."""
    if entry["reg"] in (None, "none"):
        return entry["reg"] or "—"
    return f"{entry['reg']} {entry['weight']:g}"


def plan_table(plan: list[dict]) -> str:
    """Markdown table of :func:`sweep_plan`: one row per run, its shard, model, penalty, seed, variant, epochs
    trained of those planned, the training time left, cells done of the total, and why the sweep would not go on
    with it (``ok`` if it would)."""
    lines = [
        "| shard | run | model | penalty | seed | variant | epochs | training left | cells | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plan:
        cells = [
            p["shard"] or "—",
            p["run"],
            p["model"] or "—",
            _penalty(p),
            "—" if p["seed"] is None else str(p["seed"]),
            p["variant"] or "—",
            f"{p['epochs_done']} / {p['epochs'] or '—'}",
            "—" if not p["training_left_s"] else duration(p["training_left_s"]),
            f"{p['cells_done']} / {p['cells']}",
            p["status"] or "ok",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""Training progress of a sweep's runs: how far each has got, epoch by epoch, while results rows are still to come.

A sweep folder ``OUT`` holds each training run in ``OUT/runs/<tag>/`` (``OUT/shard-i-of-n/runs/<tag>/`` when
sharded), and each run appends one row per finished epoch to its ``metrics.jsonl``
(:mod:`smoothcompress.study.training`). A long sweep spread over sessions has no results rows for a run until its
training ends; :func:`training_progress` reads the epoch rows instead, so the report can say how far every run got
and how its accuracy moved. The epoch rows' accuracy is the training run's own monitor (``test_acc``, or
``val_acc`` with a validation split), measured with the training batch's precision; a results row of the finished
run is the figure to cite.

Only ``metrics.jsonl`` is needed, and ``config.toml`` beside it says what the run trains: a copy of a sweep that
keeps these two files of each run beside the shards' ``results.jsonl`` and ``spectra.jsonl`` (and none of the
checkpoints) reports the same progress as the run folders themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from smoothcompress.files import read_jsonl
from smoothcompress.study.plotstyle import COLORS, Figure, save_figure
from smoothcompress.study.training import duration

__all__ = [
    "EVAL_KEYS",
    "SETTINGS",
    "training_progress",
    "with_results",
    "progress_table",
    "epochs_table",
    "plot_progress",
]

EVAL_KEYS = ("val_acc", "test_acc")  # the monitor of an epoch row, in the order a run's split is recognised
# The run settings an entry carries from the run's config.toml, when there is one: what was trained, on what.
SETTINGS = (
    "dataset", "data", "model", "width", "epochs", "batch_size", "lr", "reg", "weight", "seed", "device", "bf16"
)  # fmt: skip


def training_progress(folder: str | os.PathLike) -> list[dict]:
    """Every training run under a sweep folder, with its epoch rows, in shard then run order.

    Parameters
    ----------
    folder : path
        A sweep's ``out`` folder (or a committed copy of it): ``runs/<tag>/metrics.jsonl`` and
        ``shard-i-of-n/runs/<tag>/metrics.jsonl`` are read. A folder without runs gives ``[]``.

    Returns
    -------
    list of dict
        One per run: ``run`` (its tag), ``shard`` (``"i/n"`` or ``""``), ``history`` (the epoch rows, in epoch
        order), ``epochs_done``, ``epochs`` (the planned number: from the rows, else the run's ``config.toml``,
        else ``None``), ``finished`` (all planned epochs done, or the final model written), ``eval_key``
        (``"test_acc"`` or ``"val_acc"``; ``None`` before the first epoch), and ``hours`` (training and per-epoch
        evaluation time summed over the epochs, resumed parts included).

    Raises
    ------
    FileContentError
        A ``metrics.jsonl`` that is not one JSON object per line (from :func:`smoothcompress.files.read_jsonl`).
    """
    folder = Path(folder)
    places = [("", folder / "runs")]
    shards = []
    for sub in folder.glob("shard-*-of-*"):
        m = re.fullmatch(r"shard-(\d+)-of-(\d+)", sub.name)
        if m and (sub / "runs").is_dir():
            shards.append(((int(m[2]), int(m[1])), f"{m[1]}/{m[2]}", sub / "runs"))
    places += [(name, runs) for _, name, runs in sorted(shards)]
    return [_run(run_dir, shard) for shard, runs in places if runs.is_dir() for run_dir in sorted(runs.iterdir())
            if (run_dir / "metrics.jsonl").is_file()]  # fmt: skip


def _run(run_dir: Path, shard: str) -> dict:
    """The progress entry of one run folder (see :func:`training_progress`)."""
    history = sorted(read_jsonl(run_dir / "metrics.jsonl"), key=lambda r: r["epoch"])
    config = {}
    if (run_dir / "config.toml").is_file():
        from smoothcompress.study.training import read_toml  # the train extra, which wrote that run

        config = read_toml(run_dir / "config.toml")
    epochs = next((r["epochs"] for r in reversed(history) if "epochs" in r), config.get("epochs"))
    done = history[-1]["epoch"] if history else 0
    eval_key = next((k for k in EVAL_KEYS if history and k in history[-1]), None)
    return {
        "run": run_dir.name,
        "shard": shard,
        "history": history,
        "epochs_done": done,
        "epochs": epochs,
        "finished": (run_dir / "model.safetensors").is_file() or (epochs is not None and done >= epochs),
        "eval_key": eval_key,
        "hours": sum(r.get("seconds", 0.0) + r.get("eval_seconds", 0.0) for r in history) / 3600,
        "config": {k: config[k] for k in SETTINGS if k in config},
    }


def with_results(entries: list[dict], rows: list[dict]) -> list[dict]:
    """``entries`` of :func:`training_progress` completed by a sweep's results rows: a run with a row has finished
    training (a copy of the sweep keeps no final model to say so), and the rows' ``epochs`` is its plan where its
    epoch rows do not name one. Returns new entries; ``rows`` are the results rows of
    :func:`smoothcompress.study.results.load_results`."""
    planned = {r["run"]: r.get("epochs") for r in rows}
    return [
        {**e, "finished": True, "epochs": e["epochs"] if e["epochs"] is not None else planned[e["run"]]}
        if e["run"] in planned
        else e
        for e in entries
    ]


def progress_table(entries: list[dict]) -> str:
    """Markdown table of :func:`training_progress` entries: one row per run, its epochs done of those planned, the
    monitor's accuracy (%) at the last epoch and its best, the training accuracy and penalty at the last epoch, and
    the time trained (:func:`~smoothcompress.study.training.duration`)."""
    lines = [
        "| run | shard | epochs | accuracy, last epoch | best (epoch) | training accuracy | penalty | time trained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        planned = "?" if e["epochs"] is None else e["epochs"]
        state = "" if e["finished"] else " (training)"
        if not e["history"]:
            lines.append(f"| {e['run']} | {e['shard'] or '—'} | 0 / {planned}{state} | — | — | — | — | — |")
            continue
        key, last = e["eval_key"], e["history"][-1]
        if key is None:  # epoch rows without a monitor
            accuracy = "— | —"
        else:
            best = max(e["history"], key=lambda r: r.get(key, float("-inf")))
            accuracy = f"{100 * last[key]:.2f} ({key.removesuffix('_acc')}) | {100 * best[key]:.2f} ({best['epoch']})"
        lines.append(
            f"| {e['run']} | {e['shard'] or '—'} | {e['epochs_done']} / {planned}{state} | {accuracy} | "
            f"{100 * last['train_acc']:.2f} | {last.get('penalty', 0.0):.4g} | {duration(3600 * e['hours'])} |"
        )
    return "\n".join(lines)


def epochs_table(entries: list[dict]) -> str:
    """Markdown table of the monitor's accuracy (%) epoch by epoch of the runs still training: one row per epoch
    any of them has finished, one column per unfinished run with a monitor (``—`` where that run has no row for the
    epoch), headed by its tag, its shard (``1/2``) when it has one, and its split; ``""`` when no such run."""
    shown = [e for e in entries if not e["finished"] and e["history"] and e["eval_key"] is not None]
    if not shown:
        return ""
    by_run = [{r["epoch"]: r.get(e["eval_key"]) for r in e["history"]} for e in shown]
    heads = [f"{e['run']} ({_where(e)})" for e in shown]
    lines = ["| epoch | " + " | ".join(heads) + " |", "|---" * (1 + len(shown)) + "|"]
    for epoch in sorted(set().union(*by_run)):
        cells = ["—" if accs.get(epoch) is None else f"{100 * accs[epoch]:.2f}" for accs in by_run]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _where(entry: dict) -> str:
    """The shard (when there is one) and the split of a run's monitor, e.g. ``"shard 1/2, test"``."""
    split = entry["eval_key"].removesuffix("_acc")
    return f"shard {entry['shard']}, {split}" if entry["shard"] else split


def plot_progress(entries: list[dict], path: Path) -> Path | None:
    """The monitor's accuracy (%) against the epoch, one line per run (unfinished runs dashed); ``None`` when no run
    has a monitored epoch."""
    shown = [e for e in entries if e["history"] and e["eval_key"] is not None]
    if not shown:
        return None
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for i, e in enumerate(shown):
        key = e["eval_key"]
        x = [r["epoch"] for r in e["history"]]
        y = [100 * r[key] for r in e["history"]]
        label = e["run"] if e["finished"] else f"{e['run']} ({e['epochs_done']}/{e['epochs'] or '?'})"
        ax.plot(x, y, color=COLORS[i % len(COLORS)], ls="-" if e["finished"] else "--", marker="o", ms=2.5,
                lw=1.3, label=label)  # fmt: skip
    keys = sorted({e["eval_key"] for e in shown})
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"accuracy (%), {' / '.join(k.removesuffix('_acc') for k in keys)} split, each epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return path

"""Results rows -> ``report.md``, a summary table and PNG plots.

Everything here is computed from the rows that :func:`smoothcompress.study.experiment.sweep` writes
(``results.jsonl``, and ``spectra.jsonl`` for the spectra and weight pictures), so every figure traces back to a
row and every row to a command. Plots are drawn on :class:`matplotlib.figure.Figure` objects, so the pyplot state
and backend of the caller (a notebook, say) are left alone.

Rows are read by :mod:`smoothcompress.study.results` (a sharded sweep whole, from its folder, its shards merged), pooled
over seeds by :mod:`smoothcompress.study.summary`; the weight choice and the λ frontier are in
:mod:`smoothcompress.study.frontier`, the paper's claims in :mod:`smoothcompress.study.claims`. Their public names are
re-exported here; the targets (:mod:`smoothcompress.study.targets`) are a section of the report.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from smoothcompress.errors import ConfigError, FileContentError
from smoothcompress.files import write_text
from smoothcompress.methods import label_budget
from smoothcompress.study.claims import CLAIM_MIN_RATE, PAR_POINTS, assess_claims
from smoothcompress.study.frontier import (
    FRONTIER_RATE,
    SELECT_RATES,
    frontier,
    frontier_table,
    has_frontier,
    plot_frontier,
    select_weights,
    selection_lines,
)
from smoothcompress.study.plotstyle import COLORS, Figure, save_figure
from smoothcompress.study.progress import (
    epochs_table,
    plot_progress,
    progress_table,
    training_progress,
    with_results,
)
from smoothcompress.study.references import KINDS, against_references, reference_points, references_table
from smoothcompress.study.results import load_results, missing_shards, results_files, shards_note
from smoothcompress.study.summary import (
    BASELINE,
    Setting,
    format_accuracy,
    format_rates,
    index_summary,
    several_contexts,
    summarize,
)
from smoothcompress.study.targets import (
    TARGETS,
    assess_floors,
    assess_targets,
    check_floors,
    floors_table,
    targets_table,
)

__all__ = [
    "summarize",
    "select_weights",
    "frontier",
    "assess_claims",
    "assess_targets",
    "assess_floors",
    "write_report",
    "load_results",
    "missing_shards",
]


# ------------------------------------------------------------------------------------------------------------
# Reference rows


def _references(rows: list[dict], reference) -> list[dict]:
    """The points of the reference sweep(s) against the dense size of ``rows``' baseline (its median).

    ``reference``: a sweep folder or results file, or a list of them, each a reference sweep of its own.
    """
    sweeps = [reference] if isinstance(reference, str | os.PathLike) else list(reference)
    ref_rows = [r for sweep in sweeps for r in load_results(sweep)[0]]
    for key in ("dataset_sha256", "split"):
        mine, theirs = {r.get(key) for r in rows}, {r.get(key) for r in ref_rows}
        if mine != theirs:
            raise ConfigError(
                f"the reference rows have {key} {sorted(map(str, theirs))}, the results {sorted(map(str, mine))}; "
                "give a reference sweep on the same data and split"
            )
    mine, theirs = {r["model"] for r in rows}, {r["model"] for r in ref_rows}
    if theirs - mine:
        warnings.warn(
            f"the reference model(s) {', '.join(sorted(theirs - mine))} are not among the results' "
            f"({', '.join(sorted(mine))}): the comparison crosses architectures",
            UserWarning,
            stacklevel=3,
        )
    dense = sorted(r["params_dense"] for r in rows if r["reg"] == BASELINE and r.get("params_dense"))
    dense = dense or sorted(r["params_dense"] for r in rows if r.get("params_dense"))
    return reference_points(ref_rows, dense[len(dense) // 2])


# ------------------------------------------------------------------------------------------------------------
# Plots


def _colors(groups: list[Setting]) -> dict[Setting, str]:
    """Smooth settings get distinct colours; baselines are black (and drawn dashed)."""
    smooth = [g for g in groups if g.reg != BASELINE]
    colors = {g: COLORS[i % len(COLORS)] for i, g in enumerate(smooth)}
    colors.update({g: "black" for g in groups if g.reg == BASELINE})
    return colors


def _style(g: Setting) -> str:
    return "--" if g.reg == BASELINE else "-"


# More methods than this wrap onto further rows: a row of 7 panels is too wide to read on a page.
PANELS_PER_ROW = 4


def plot_accuracy(summary: list[dict], path: Path, references: list[dict] | None = None) -> Path:
    """Accuracy against parameter reduction: one panel per method, one line per setting, baseline dashed; the
    network trained small (:func:`smoothcompress.study.references.reference_points`), when given: dotted grey for
    narrower widths, dash-dotted black for the factorized architecture trained from scratch."""
    labels = sorted({s["label"] for s in summary if s["label"] != "dense"})
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    colors, multi = _colors(groups), several_contexts(groups)
    n = max(1, len(labels))
    cols = min(n, PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    for ax in axes.flat[n:]:  # a last row's empty panels
        ax.set_visible(False)
    for ax, label in zip(axes.flat, labels, strict=False):
        for g in groups:
            pts = sorted(
                (100 * s["rate_achieved"], 100 * s["acc"], 100 * s["std"])
                for s in summary
                if s["group"] == g and s["label"] in (label, "dense") and "acc" in s
            )
            if not pts:
                continue
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(
                x, y, yerr=e if any(e) else None, color=colors[g], marker="o", ms=3.5, capsize=2, lw=1.4,
                ls=_style(g), label=g.name(multi),
            )  # fmt: skip
        for kind, style in zip(KINDS, ((":", "s"), ("-.", "D")), strict=True):
            curve = [p for p in references or () if p["kind"] == kind]
            if curve:
                ax.errorbar(
                    [100 * p["rate"] for p in curve], [100 * p["acc"] for p in curve],
                    yerr=[100 * p["std"] for p in curve], color="grey" if kind == KINDS[0] else "black",
                    marker=style[1], ms=3.5, capsize=2, lw=1.2, ls=style[0], label=kind,
                )  # fmt: skip
        ax.set_title(label)
        ax.set_xlabel("parameters removed (%)")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("accuracy (%), no fine-tuning")
    if axes.flat[n - 1].get_legend_handles_labels()[0]:  # a sweep of dense rows only draws no line
        axes.flat[n - 1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _spectra_runs(spectra: list[dict]) -> list[tuple[Setting, dict]]:
    """The lowest-seed run of each setting in the first model/width/variant (pictures compare like with like)."""
    runs: dict[Setting, dict] = {}
    for r in sorted(spectra, key=lambda r: r["seed"]):
        runs.setdefault(Setting.of({"model": "", **r}), r)
    ordered = sorted(runs.items(), key=lambda kv: kv[0].sort_key())
    first = ordered[0][0].context() if ordered else None
    return [(g, r) for g, r in ordered if g.context() == first]


def plot_spectra(spectra: list[dict], path: Path) -> Path | None:
    """Normalised singular values of a few layers: smooth models against the baseline (dashed)."""
    runs = _spectra_runs(spectra)
    layers = list(runs[0][1]["spectra"]) if runs else []
    if not layers:
        return None
    colors = _colors([g for g, _ in runs])
    fig = Figure(figsize=(4.2 * len(layers), 3.6))
    axes = fig.subplots(1, len(layers), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for g, r in runs:
            s = r["spectra"].get(layer)
            if s:
                ax.semilogy(range(1, len(s) + 1), s, color=colors[g], ls=_style(g), label=g.name())
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("singular value index i")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("σ_i / σ_1")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_weights(spectra: list[dict], path: Path) -> Path | None:
    """One weight slice per setting as an image (out channels x in channels, centre tap of the kernel)."""
    runs = [(g, r) for g, r in _spectra_runs(spectra) if r.get("slice")]
    if not runs:
        return None
    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig = Figure(figsize=(3.3 * cols, 3.2 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax, (g, r) in zip(axes.flat, runs, strict=False):
        w = r["slice"]
        vmax = max(abs(v) for row in w for v in row) or 1.0
        im = ax.imshow(w, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{g.name()}\nlayer {r['slice_layer']}", fontsize=9)
        ax.set_xlabel("in channel")
        ax.set_ylabel("out channel")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    tap = " (centre tap of each kernel)" if runs[0][1].get("slice_is_conv") else ""
    fig.suptitle(f"weights{tap}, first 64 x 64 entries", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


# ------------------------------------------------------------------------------------------------------------
# Markdown


def summary_table(summary: list[dict]) -> str:
    """Markdown table: one row per (setting, method) that ran, accuracy (%) at each rate; seeds pooled (mean ± std);
    the seeds column counts the method's seeds (the most of any of its rates)."""
    index = index_summary(summary)
    rates = sorted({s["rate"] for s in summary if s["rate"] > 0})
    groups = sorted({s["group"] for s in summary}, key=Setting.sort_key)
    labels = sorted({s["label"] for s in summary if s["label"] != "dense"})
    multi = several_contexts(groups)
    head = "| setting | method | seeds | dense | " + " | ".join(f"{100 * r:.0f}%" for r in rates) + " |"
    lines = [head, "|" + "---|" * (4 + len(rates))]
    for g in groups:
        dense = index.get((g, "dense", 0.0))
        for lab in labels:
            run = [index[(g, lab, r)] for r in rates if (g, lab, r) in index]
            if not run:  # this setting never ran this method
                continue
            cells = [format_accuracy(index.get((g, lab, r))) for r in rates]
            n = max(c["n"] for c in run)  # the seeds of the method's cells (a rate out of reach counts 0)
            lines.append(f"| {g.name(multi)} | {lab} | {n} | {format_accuracy(dense)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    results: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    reference: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    floors: Mapping[float, float] | None = None,
) -> Path:
    """Write ``report.md``, ``summary.md`` and the PNG plots of a sweep into ``out_dir``; return report.md.

    ``results`` is what :func:`load_results` reads: a sweep folder (its shards merged), a results file, or
    several. When some penalty was trained at more than one weight, the report has a frontier section (table
    and ``frontier.png``); on a validation split, a weight-selection section (:func:`select_weights`); with
    baseline and penalised low-rank rows at the target rates, a targets section (:func:`assess_targets`).
    ``reference`` is a sweep of the network trained small (:mod:`smoothcompress.study.references`), a sweep folder
    or results file, or a list of such sweeps (e.g. narrower widths and the factorized architecture trained from
    scratch): their dense rows become lines on the accuracy plot and a section comparing every compressed cell
    with them at equal parameters. They must be on the same dataset and split.

    ``floors`` (``{rate: accuracy}``, fractions, e.g. ``{0.7: 0.91}``) adds a section judging whether the best
    smooth model, compressed, keeps each accuracy at its rate (:func:`assess_floors`).

    When the folders hold the runs' epoch rows (``runs/<tag>/metrics.jsonl``, :mod:`smoothcompress.study.progress`),
    the report has a training-runs section and ``training.png``. A sweep whose runs are all still training (folders
    with runs and no results file yet) gets a report of that section alone, and ``summary.md`` holds its table.

    Raises
    ------
    FileNotFoundError
        Neither a results file nor a training run is found (from :func:`load_results`).
    ValueError
        Rows that cannot make one report (see :func:`load_results`), references on another dataset or split, or
        a floor outside (0, 1).

    Warns
    -----
    UserWarning
        A shard is missing, or a run's ``metrics.jsonl`` cannot be read (the training runs are left out).
    """
    check_floors(floors or {})  # before anything is read or written
    paths = [Path(results)] if isinstance(results, str | os.PathLike) else [Path(p) for p in results]
    folders = [p for p in paths if p.is_dir()]
    out = Path(out_dir)
    try:
        progress = [e for f in folders for e in training_progress(f)]
    except FileContentError as e:
        warnings.warn(f"{e}: the report leaves the training runs out", UserWarning, stacklevel=2)
        progress = []
    if progress and len(folders) == len(paths) and not any(results_files(f) for f in folders):
        return _progress_report(progress, out)
    rows, spectra = load_results(results)
    floor_verdicts = assess_floors(rows, floors or {})
    progress = with_results(progress, rows)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    references = _references(rows, reference) if reference is not None else None
    table = summary_table(summary)
    write_text(out / "summary.md", table + "\n")
    entries = frontier(rows)
    show_frontier = has_frontier(entries)
    plots = {
        "Accuracy against parameter reduction": plot_accuracy(summary, out / "accuracy.png", references),
        "The λ frontier": plot_frontier(entries, out / "frontier.png") if show_frontier else None,
        "Singular-value spectra": plot_spectra(spectra, out / "spectra.png"),
        "Weight smoothness": plot_weights(spectra, out / "weights.png"),
        "Training runs": plot_progress(progress, out / "training.png"),
    }
    datasets = sorted({(r["dataset"], r.get("dataset_sha256", "")) for r in rows})
    splits = sorted({r.get("split", "test") for r in rows})
    commits = sorted({r.get("commit", "unknown") for r in rows})
    devices = sorted({r.get("device", "unknown") for r in rows})
    train_wall = sum({r["run"]: r.get("train_wall_s") or 0.0 for r in rows}.values())
    eval_wall = sum(r.get("wall_s") or 0.0 for r in rows)
    budgets = {label_budget(r["label"]) for r in rows}
    md = ["# smoothcompress report", ""]
    md += [f"- dataset: {name} (sha256 `{sha}`)" for name, sha in datasets]
    fingerprints = sorted({r["sweep_fingerprint"] for r in rows if r.get("sweep_fingerprint")})
    md += [
        f"- split evaluated: {', '.join(splits)}",
        *([f"- sweep config fingerprint: {', '.join(f'`{f}`' for f in fingerprints)}"] if fingerprints else []),
        *([f"- {shards_note(rows)}"] if shards_note(rows) else []),
        f"- commits: {', '.join(commits)}",
        f"- devices: {', '.join(devices)}",
        f"- rows: {len(rows)} from {len({r['run'] for r in rows})} training runs; "
        f"training {train_wall / 60:.1f} min, compression + evaluation {eval_wall / 60:.1f} min",
        "",
        "## Accuracy (%) after compression, no fine-tuning",
        "",
        "Mean ± std over seeds. Columns are the requested fraction of all parameters removed; magnitude pruning counts "
        "non-zeros."
        + (
            " Methods labelled `-flops` are at a FLOPs budget: their column is the fraction of FLOPs removed."
            if "flops" in budgets
            else ""
        )
        + (
            " Methods labelled `-flops-matched` keep the FLOPs of the parameter plan at their column's rate, with "
            "parameters of their own."
            if "flops-matched" in budgets
            else ""
        )
        + (
            " Targets, floors and the SVD-against-pruning claim compare parameter budgets only."
            if len(budgets) > 1
            else ""
        ),
        "",
        table,
        "",
    ]
    multi = several_contexts(s["group"] for s in summary)
    errors = [(s["group"].name(multi), s["label"], s["rate"], e) for s in summary for e in s["errors"]]
    if errors:
        md += ["Cells out of reach (shown as —):", ""]
        md += [f"- {name}, {lab} at {100 * rate:.0f}%: {e}" for name, lab, rate, e in errors]
        md.append("")
    if references:
        comparisons = against_references(summary, references)
        md += [
            "## Against the network trained small",
            "",
            "Small networks trained from scratch with the same schedule (no penalty): the architecture at smaller "
            "widths, and where given the factorized architecture that compress picks (its ranks file), parameters "
            "counted against this sweep's dense model. Below, each compressed cell's accuracy minus the reference "
            "accuracy at the cell's achieved rate (linear between the reference points of one kind; cells outside "
            "their range are left out), in points: positive means compression beats training small.",
            "",
            references_table(references, comparisons, several_contexts(s["group"] for s in summary)),
            "",
        ]
    if show_frontier:
        labels = sorted({e["data_label"] for e in entries if e["data_label"]})
        described = [f"SVD: {entries[0]['svd_label']}"] if entries[0]["svd_label"] else []
        if labels:
            described.append(f"data-aware SVD: per row the best of {', '.join(labels)} at {format_rates(SELECT_RATES)}")
        intro = "One row per penalty and λ; mean ± std over seeds." + (f" {'; '.join(described)}." if described else "")
        if plots["The λ frontier"]:
            intro += f" `frontier.png` plots the dense accuracy against the accuracy at {100 * FRONTIER_RATE:.0f}%"
            intro += " fewer parameters."
        md += [
            "## The λ frontier: dense accuracy against accuracy after compression",
            "",
            intro,
            "",
            frontier_table(entries),
            "",
        ]
    if "val" in splits:
        md += selection_lines(rows)
    verdicts = assess_targets(rows)
    if verdicts:
        bars = ", ".join(f"within {p:g} points at {100 * r:.0f}%" for r, p in sorted(TARGETS.items()))
        md += [
            "## Targets: the best smooth model, compressed, against the dense baseline",
            "",
            f"The bar: {bars} fewer parameters, the best of every penalty, λ and low-rank method (plain SVD, a "
            "data-aware or sequential variant, CP or Tucker; no gradient step) against the unregularized model's "
            f"dense accuracy; seed means, split: {', '.join(splits)}. Where a tensor scheme (CP, Tucker) wins, the "
            "best among the SVD schemes alone is judged beside it. The best is picked on this split among the "
            "candidates counted below: on the test split an optimistic figure (choose weights on a validation split "
            "first). The last column is the baseline's own best after the same methods.",
            "",
            targets_table(verdicts),
            "",
            "Candidates per row: " + ", ".join(f"{100 * v['rate']:.0f}%: {v['candidates']}" for v in verdicts) + ".",
            "",
        ]
    md += _floor_lines(floor_verdicts, floors or {}, splits)
    claims = assess_claims(rows)
    if claims:
        md += ["## The paper's claims, judged by these rows", ""]
        if "val" in splits:
            md += [
                "*Indicative only: these rows are on the validation split that chose the weights; judge the claims "
                "on a test-split sweep.*",
                "",
            ]
        md += [
            f"Rates from {100 * CLAIM_MIN_RATE:.0f}% count; differences are in accuracy points (seed means), and "
            f"differences within {PAR_POINTS:g} point are ties. 'supported': better by more than that at one rate "
            "at least and worse at none; 'partly supported': better at some rates, worse at others; 'no difference': "
            "ties only; 'not supported': worse somewhere, better nowhere. Claim 1: dense accuracy within "
            f"{PAR_POINTS:g} point of the baseline or better.",
            "",
            "| claim | setting | verdict | evidence |",
            "|---|---|---|---|",
        ]
        md += [f"| {c['claim']} | {c['setting']} | **{c['verdict']}** | {c['evidence']} |" for c in claims]
        md.append("")
    md += _progress_lines(progress)
    md += ["## Plots", ""]
    md += [f"### {title}\n\n![{title}]({p.name})\n" for title, p in plots.items() if p is not None]
    path = out / "report.md"
    write_text(path, "\n".join(md) + "\n")
    return path


def _floor_lines(verdicts: list[dict], floors: Mapping[float, float], splits: list[str]) -> list[str]:
    """The report's section on accuracy floors: ``verdicts`` of :func:`assess_floors` on ``floors``."""
    if not floors:
        return []
    bars = ", ".join(f"{100 * a:g}% at {100 * r:.0f}%" for r, a in sorted(floors.items()))
    head = ["## Floors: the best smooth model, compressed, against fixed accuracies", ""]
    none = "No smooth model has low-rank rows at a parameter budget at"
    if not verdicts:
        return [*head, f"The floors: {bars} fewer parameters. {none} these rates.", ""]
    judged = {v["floor_rate"] for v in verdicts}
    unjudged = [f"{100 * r:g}%" for r in sorted(floors) if r not in judged]
    return [
        *head,
        f"The floors: {bars} fewer parameters; the best of every penalty, λ and low-rank method (no gradient step), "
        f"seed means, split: {', '.join(splits)}, the candidates as for the targets: picked on this split, the "
        "best of many is an optimistic figure. The last columns are the baseline's own best after the same methods "
        "and its dense accuracy.",
        "",
        floors_table(verdicts),
        "",
        "Candidates per row: " + ", ".join(f"{100 * v['rate']:.0f}%: {v['candidates']}" for v in verdicts) + ".",
        "",
        *([f"{none} {', '.join(unjudged)}: not judged.", ""] if unjudged else []),
    ]


def _progress_lines(progress: list[dict]) -> list[str]:
    """The report's section on the training runs (:mod:`smoothcompress.study.progress`); none without runs."""
    if not progress:
        return []
    return [
        "## Training runs",
        "",
        "Each run's own monitor after every epoch (the accuracy the trainer measures on its evaluation split, in "
        "the training precision), read from the runs' `metrics.jsonl`; `training.png` plots it by epoch.",
        "",
        progress_table(progress),
        "",
        *_epoch_lines(progress),
    ]


def _epoch_lines(progress: list[dict]) -> list[str]:
    """The monitor of each run still training, epoch by epoch (:func:`~smoothcompress.study.progress.epochs_table`):
    the only record of such a run until its results rows come. None once every run has finished."""
    table = epochs_table(progress)
    return ["Accuracy (%) by epoch of the runs still training:", "", table, ""] if table else []


def _progress_report(progress: list[dict], out: Path) -> Path:
    """``report.md`` of a sweep whose runs are still training (no results rows yet): their progress only, its table
    also in ``summary.md``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.md", progress_table(progress) + "\n")
    plot = plot_progress(progress, out / "training.png")
    done = sum(e["finished"] for e in progress)
    md = [
        "# smoothcompress report",
        "",
        f"No results rows yet: {done} of {len(progress)} training runs finished, none compressed. The rows come "
        "when each run's training ends (`smoothcompress sweep` resumes every run from its last epoch), with the "
        "commit, device and dataset sha256 of each.",
        "",
        *[f"- {e['run']}: {', '.join(f'{k} {v}' for k, v in e['config'].items())}" for e in progress if e["config"]],
        "",
        *_progress_lines(progress),
        *([f"![Training runs]({plot.name})", ""] if plot is not None else []),
    ]
    path = out / "report.md"
    write_text(path, "\n".join(md) + "\n")
    return path

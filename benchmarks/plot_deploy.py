"""Plot of ``benchmarks/results/deploy.json``: test accuracy of the trained runs' forms against bytes and milliseconds.

Two panels, one point per (trained run, form), coloured by form and marked by the run's penalty: test accuracy (%)
against the bytes of the form's ONNX file (log scale), and against its onnxruntime latency in one timing cell
(``--cell``, default batch 1 on 1 thread; every form has an ONNX file, int8 included, so all are timed in the same
engine). Rows of the speed-only models (random init, no accuracy) are not drawn.

Run: ``.venv/bin/python benchmarks/plot_deploy.py [benchmarks/results/deploy.json] [-o PNG] [--cell batch1-threads1]``
after ``benchmarks/bench_deploy.py``; writes ``deploy.png`` next to the JSON unless ``-o`` is given. Results of
``bench_deploy.py --quick`` (a smoke test, not a result) are refused unless ``--allow-quick``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from _common import REPO, rel  # noqa: E402  (benchmarks/, the script's folder)

from smoothcompress.study.plotstyle import COLORS, Figure, save_figure

RESULTS = REPO / "benchmarks" / "results" / "deploy.json"
MARKERS = {"none": "o", "nuclear": "s", "first": "^", "second": "v"}


def plot(data: dict, out: Path, cell: str) -> Path:
    """Write the two-panel figure of ``data`` (the JSON of bench_deploy.py) to ``out``; ValueError without trained
    rows, or when ``cell`` was not timed."""
    if not re.fullmatch(r"batch\d+-threads\d+", cell):
        raise ValueError(f"a timing cell reads batchB-threadsT, e.g. batch1-threads1; got {cell!r}")
    rows = [r for r in data["rows"] if r.get("kind") == "trained" and "accuracy" in r]
    if not rows:
        raise ValueError("no trained rows with an accuracy to plot; run bench_deploy.py on trained run folders")
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colors = {v: COLORS[i % len(COLORS)] for i, v in enumerate(variants)}
    fig = Figure(figsize=(11, 4.4))
    by_bytes, by_ms = fig.subplots(1, 2, sharey=True)
    for r in rows:
        ms = r.get("latency", {}).get("onnxruntime", {}).get(cell)
        if ms is None:
            timed = sorted(r.get("latency", {}).get("onnxruntime", {}))
            raise ValueError(f"cell {cell!r} was not timed; the cells are {timed}")
        style = {"color": colors[r["variant"]], "marker": MARKERS.get(r.get("reg"), "D"), "s": 36, "alpha": 0.85}
        by_bytes.scatter(r["onnx_bytes"], 100 * r["accuracy"], **style)
        by_ms.scatter(ms["ms"], 100 * r["accuracy"], **style)
    by_bytes.set_xscale("log")
    by_bytes.set_xlabel("ONNX file (bytes, log scale)")
    by_bytes.set_ylabel("test accuracy (%)")
    batch, threads = re.fullmatch(r"batch(\d+)-threads(\d+)", cell).groups()
    by_ms.set_xlabel(f"onnxruntime latency (ms, batch {batch}, {threads} thread{'s' if threads != '1' else ''})")
    for ax in (by_bytes, by_ms):
        ax.grid(alpha=0.3)
    handles = [by_ms.scatter([], [], color=colors[v], marker="o", label=v) for v in variants]
    regs = sorted({r.get("reg") for r in rows}, key=str)
    handles += [by_ms.scatter([], [], color="black", marker=MARKERS.get(g, "D"), label=f"penalty {g}") for g in regs]
    by_ms.legend(handles=handles, fontsize=7, loc="lower right")
    rate = data["settings"]["rate"]
    fig.suptitle(f"Deployable forms of the trained runs at {rate:.0%} fewer parameters (no fine-tuning)")
    fig.tight_layout()
    return save_figure(fig, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", type=Path, default=RESULTS, help="deploy.json of bench_deploy.py")
    p.add_argument("-o", "--out", type=Path, default=None, help="PNG to write (default: deploy.png beside the JSON)")
    p.add_argument("--cell", default="batch1-threads1", help="timing cell of the latency panel")
    p.add_argument("--allow-quick", action="store_true", help="plot results of --quick (a smoke test of the plot)")
    args = p.parse_args()
    data = json.loads(args.results.read_text())
    if data["settings"].get("quick") and not args.allow_quick:
        p.error(f"{rel(args.results)} holds --quick results (a smoke test, not a result); plot real results")
    out = args.out or args.results.with_suffix(".png")
    try:
        print(f"wrote {rel(plot(data, out, args.cell))}")
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()

"""Report: summary pooling, weight selection, claim verdicts and plots, from synthetic rows."""

import itertools
import json
import subprocess
import sys

import pytest

from smoothcompress.study import report

RATES = [0.5, 0.7]


def _rows(split="test"):
    """Baseline and a nuclear model, two seeds; the smooth model compresses better, pruning is worse."""
    acc = {
        ("none", "dense"): 0.90,
        ("none", "svd-global-channel"): 0.60,
        ("none", "magnitude"): 0.50,
        ("nuclear", "dense"): 0.895,
        ("nuclear", "svd-global-channel"): 0.85,
        ("nuclear", "magnitude"): 0.40,
    }
    rows = []
    for reg, weight in (("none", 0.0), ("nuclear", 0.01)):
        for seed in (0, 1):
            for label, rates in (("dense", [0.0]), ("svd-global-channel", RATES), ("magnitude", RATES)):
                for rate in rates:
                    a = acc[(reg, label)] - 0.1 * rate * (label != "dense") + 0.002 * seed
                    rows.append(
                        {
                            "run": f"{reg}-s{seed}",
                            "model": "mlp",
                            "width": 32,
                            "dataset": "digits",
                            "dataset_sha256": "abc",
                            "split": split,
                            "reg": reg,
                            "weight": weight,
                            "seed": seed,
                            "method": label.split("-")[0] if label != "magnitude" else label,
                            "label": label,
                            "rate_requested": rate,
                            "rate_achieved": rate + 0.001,
                            "accuracy": a,
                            "wall_s": 0.1,
                            "train_wall_s": 1.0,
                        }
                    )
    return rows


def test_summarize_pools_seeds():
    summary = report.summarize(_rows())
    cell = next(s for s in summary if s["group"].reg == "nuclear" and s["label"] == "dense")
    assert cell["n"] == 2
    assert cell["acc"] == pytest.approx(0.896)
    assert cell["std"] == pytest.approx(0.002 / 2**0.5)


def test_claims_follow_the_numbers():
    claims = {(c["claim"][:2], c["setting"]): c["verdict"] for c in report.assess_claims(_rows())}
    assert claims[("1.", "nuclear λ=0.01")] == "supported"  # -0.5 points, within 1
    assert claims[("2.", "nuclear λ=0.01, svd-global-channel")] == "supported"
    assert claims[("3.", "nuclear λ=0.01, magnitude")] == "not supported"  # 10 points worse
    assert claims[("4.", "baseline, svd-global-channel vs magnitude")] == "supported"


@pytest.mark.parametrize("budget", ["flops", "flops-matched"])
def test_svd_at_a_flops_budget_is_held_against_itself_not_against_pruning(budget):
    flops = [
        dict(r, label=f"{r['label']}-{budget}", rate_achieved=r["rate_achieved"] - 0.2)
        for r in _rows()
        if r["label"] == "svd-global-channel"
    ]
    claims = {(c["claim"][:2], c["setting"]) for c in report.assess_claims(_rows() + flops)}
    assert ("2.", f"nuclear λ=0.01, svd-global-channel-{budget}") in claims  # one label, one rate: a fair pair
    assert not any(c == "4." and budget in setting for c, setting in claims)
    assert ("4.", "baseline, svd-global-channel vs magnitude") in claims


def test_claim_one_fails_when_dense_accuracy_drops():
    rows = [
        dict(r, accuracy=r["accuracy"] - 0.05) if r["reg"] == "nuclear" and r["label"] == "dense" else r
        for r in _rows()
    ]
    verdicts = [c["verdict"] for c in report.assess_claims(rows) if c["claim"].startswith("1.")]
    assert verdicts == ["not supported"]


def test_select_weights_prefers_accurate_and_compressible():
    rows = _rows("val")
    worse = [
        dict(r, weight=0.1, run=r["run"] + "b", accuracy=r["accuracy"] - 0.2) for r in rows if r["reg"] == "nuclear"
    ]
    sel = report.select_weights(rows + worse)[("mlp", 32, "", "nuclear")]
    assert sel["weight"] == 0.01
    assert set(sel["scores"]) == {0.01, 0.1}


def test_select_weights_keeps_widths_apart():
    rows = _rows("val")
    wide = [dict(r, width=64, weight=0.1 if r["reg"] == "nuclear" else 0.0, accuracy=r["accuracy"] / 2) for r in rows]
    sel = report.select_weights(rows + wide)
    assert sel[("mlp", 32, "", "nuclear")]["weight"] == 0.01 and sel[("mlp", 64, "", "nuclear")]["weight"] == 0.1


def test_out_of_reach_cells_lose_and_verdicts_cover_all_cases():
    rows = _rows()
    for r in rows:
        if r["reg"] == "none" and r["label"] == "svd-global-channel" and r["rate_requested"] == 0.7:
            r.update(accuracy=None, error="rate 0.7 is out of reach")
    claims = {(c["claim"][:2], c["setting"]): c for c in report.assess_claims(rows)}
    claim2 = claims[("2.", "nuclear λ=0.01, svd-global-channel")]
    assert claim2["verdict"] == "supported" and "out of reach" in claim2["evidence"]


@pytest.mark.parametrize(
    ("nuclear_svd", "verdict"),
    [
        ({0.5: 0.62, 0.7: 0.50}, "partly supported"),  # +2 points at 50%, -8 at 70%
        ({0.5: 0.555, 0.7: 0.535}, "no difference"),  # within a point of the baseline at both rates
        ({}, "no data"),  # no SVD rows for the smooth model
    ],
)
def test_verdicts_cover_all_cases(nuclear_svd, verdict):
    rows = []  # baseline + SVD: 55.1% at 50%, 53.1% at 70% (seed means)
    for r in _rows():
        if r["reg"] == "nuclear" and r["label"] == "svd-global-channel":
            if r["rate_requested"] not in nuclear_svd:
                continue
            r = dict(r, accuracy=nuclear_svd[r["rate_requested"]])
        rows.append(r)
    claims = {(c["claim"][:2], c["setting"]): c for c in report.assess_claims(rows)}
    claim = claims[("2.", "nuclear λ=0.01, svd-global-channel")]
    assert claim["verdict"] == verdict
    if verdict == "no data":
        assert claim["evidence"] == "no rate from 50% has rows of both sides"
    else:
        assert claim["evidence"].startswith("points vs baseline at rate 50%: ")


def test_mixed_splits_are_refused(tmp_path):
    rows = _rows("val") + [dict(r, split="test", run=f"{r['run']}-test") for r in _rows()]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="mixes rows of several splits"):
        report.load_results(tmp_path)


def test_a_cell_twice_in_one_file_is_refused_not_pooled_as_a_seed(tmp_path):
    rows = _rows()
    folder = _write_sweep(tmp_path / "sweep", [*rows, dict(rows[3], accuracy=0.1)])
    with pytest.raises(ValueError, match=r"rows 4 and 21 both hold run none-s0, magnitude at rate 0.5: two sweeps"):
        report.load_results(folder)


def test_foreign_rows_are_refused(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps({"accuracy": 0.5}) + "\n")
    with pytest.raises(ValueError, match="lacks run, model"):
        report.load_results(tmp_path)


def test_write_report(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows("val")))
    spectra = [
        {"run": f"{reg}-s0", "reg": reg, "weight": weight, "seed": 0, "spectra": {"fc": [1.0, 0.5, 0.1]},
         "slice_layer": "fc", "slice": [[0.1, -0.2], [0.3, 0.0]]}
        for reg, weight in (("none", 0.0), ("nuclear", 0.01))
    ]  # fmt: skip
    (sweep / "spectra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in spectra))
    md = report.write_report(sweep, tmp_path / "out").read_text()
    assert "digits" in md and "| nuclear λ=0.01 | svd-global-channel | 2 |" in md
    assert "Weight selection" in md and "claims" in md and "Indicative only" in md
    for png in ("accuracy.png", "spectra.png", "weights.png"):
        data = (tmp_path / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _write_sweep(folder, rows):
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_rows_of_old_sweeps_with_lam_give_the_same_report(tmp_path):
    """Sweeps once wrote the penalty weight as "lam": their rows still read, into the very same report."""
    new = report.write_report(_write_sweep(tmp_path / "new", _rows("val")), tmp_path / "rep_new")
    old_rows = [{("lam" if k == "weight" else k): v for k, v in r.items()} for r in _rows("val")]
    old = report.write_report(_write_sweep(tmp_path / "old", old_rows), tmp_path / "rep_old")
    assert old.read_text() == new.read_text() and "| mlp-w32 | nuclear | 0.01 |" in old.read_text()
    assert report.select_weights(old_rows) == report.select_weights(_rows("val"))


def test_rows_without_a_weight_are_refused(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "weight"} for r in _rows()]
    with pytest.raises(ValueError, match="lacks weight"):
        report.load_results(_write_sweep(tmp_path / "sweep", rows))


def test_the_report_leaves_pyplot_and_the_backend_alone(tmp_path):
    """A notebook user's backend must survive a report: no pyplot import, no matplotlib.use."""
    folder = _write_sweep(tmp_path / "sweep", _rows())
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); from smoothcompress.study import report; "
        f"report.write_report({str(folder)!r}, {str(tmp_path / 'out')!r}); "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "False"]
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_results_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="smoothcompress sweep"):
        report.load_results(tmp_path)


# The λ frontier: (dense, plain SVD, svd-data+bn) accuracy at 70%; 5 points less at 80%; two seeds, +0.2 for seed 1.
FRONTIER = {
    ("none", 0.0): (0.90, 0.40, 0.60),
    ("nuclear", 1e-3): (0.895, 0.70, 0.88),
    ("nuclear", 1e-2): (0.892, 0.80, 0.85),  # 0.8 points below the baseline: allowed
    ("nuclear", 1e-1): (0.885, 0.90, 0.95),  # best compressed, but 1.5 points below the baseline
}
LABELS = {"dense": "dense", "svd-global-channel": "svd", "svd-data+bn-global-channel": "svd-data+bn"}


def _frontier_rows(table=FRONTIER, split="val"):
    rows = []
    for (reg, weight), accs in table.items():
        for seed, (label, method) in itertools.product((0, 1), LABELS.items()):
            for rate in [0.0] if label == "dense" else [0.5, 0.7, 0.8]:
                acc = accs[list(LABELS).index(label)] - (0.05 if rate == 0.8 else 0.0) + 0.002 * seed
                rows.append(
                    {"run": f"{reg}{weight:g}-s{seed}", "model": "mlp", "width": 32, "dataset": "digits",
                     "dataset_sha256": "abc", "split": split, "reg": reg, "weight": weight, "seed": seed,
                     "method": method, "label": label, "rate_requested": rate, "rate_achieved": rate,
                     "accuracy": acc, "wall_s": 0.1, "train_wall_s": 1.0}
                )  # fmt: skip
    return rows


def test_select_weights_keeps_dense_accuracy_within_a_point():
    sel = report.select_weights(_frontier_rows())[("mlp", 32, "", "nuclear")]
    assert sel["label"] == "svd-global-channel" and sel["feasible"] and sel["note"] == ""
    assert sel["weight"] == 1e-2  # 1e-1 compresses better but costs 1.5 points of dense accuracy
    assert sel["score"] == pytest.approx((0.80 + 0.75) / 2 + 0.001)  # mean at 70% and 80%, seeds pooled
    assert sel["baseline_dense"] == pytest.approx(0.901) and set(sel["scores"]) == {1e-3, 1e-2, 1e-1}
    data = sel["data_aware"]["svd-data+bn-global-channel"]
    assert data["weight"] == 1e-3  # its own choice: the best data-aware accuracy within the point


def test_select_weights_falls_back_to_the_best_dense_weight_and_says_so():
    table = {k: (v[0] - 0.02, *v[1:]) if k[0] == "nuclear" else v for k, v in FRONTIER.items()}
    sel = report.select_weights(_frontier_rows(table))[("mlp", 32, "", "nuclear")]
    assert sel["weight"] == 1e-3 and not sel["feasible"]
    assert sel["note"].startswith("no λ keeps dense accuracy within 1 point of the baseline's 90.10%")


def test_select_weights_refuses_the_test_split():
    with pytest.raises(ValueError, match="chooses on the validation split, but rows are on the test split"):
        report.select_weights(_frontier_rows(split="test"))


def test_the_frontier_table_and_plot(tmp_path):
    sweep = _write_sweep(tmp_path / "sweep", _frontier_rows())
    md = report.write_report(sweep, tmp_path / "out").read_text()
    section = md[md.index("## The λ frontier") : md.index("## Weight selection")]
    assert "| penalty | λ | seeds | dense | SVD 70% | SVD 80% | data-aware SVD | 70% | 80% |" in section
    assert "| nuclear | 0.1 | 2 | 88.60 ± 0.14 | 90.10 ± 0.14 | 85.10 ± 0.14 | svd-data+bn-global-channel |" in section
    assert "| baseline | — | 2 | 90.10 ± 0.14 |" in section
    assert "| mlp-w32 | nuclear | 0.01 | svd-global-channel | 89.30 (90.10) | 77.60 |" in md
    assert "| mlp-w32 | nuclear | 0.001 | svd-data+bn-global-channel |" in md
    data = (tmp_path / "out" / "frontier.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000 and "![The λ frontier](frontier.png)" in md
    # no plain SVD: its columns are left out; no SVD method at all: the dense accuracies alone, no plot
    only_data = [r for r in _frontier_rows() if r["label"] != "svd-global-channel"]
    md = report.write_report(_write_sweep(tmp_path / "data", only_data), tmp_path / "out-data").read_text()
    section = md[md.index("## The λ frontier") : md.index("## Weight selection")]
    assert "| penalty | λ | seeds | dense | data-aware SVD | 70% | 80% |" in section
    assert "SVD: " not in section.replace("data-aware SVD: ", "") and "frontier.png" in section
    dense_only = [r for r in _frontier_rows() if r["label"] == "dense"]
    md = report.write_report(_write_sweep(tmp_path / "dense", dense_only), tmp_path / "out-dense").read_text()
    section = md[md.index("## The λ frontier") :]
    assert "| penalty | λ | seeds | dense |\n" in section and "frontier.png" not in section
    assert not (tmp_path / "out-dense" / "frontier.png").exists()
    # one weight per penalty: no frontier
    md = report.write_report(_write_sweep(tmp_path / "one", _rows("test")), tmp_path / "out1").read_text()
    assert "λ frontier" not in md and not (tmp_path / "out1" / "frontier.png").exists()


def test_a_flops_budget_column_is_said_to_count_flops(tmp_path):
    rows = [{**r, "label": r["label"] + "-flops"} if r["label"] != "dense" else r for r in _rows()]
    text = report.write_report(_write_sweep(tmp_path / "flops", rows), tmp_path / "out").read_text()
    assert "their column is the fraction of FLOPs removed" in text
    text = report.write_report(_write_sweep(tmp_path / "params", _rows()), tmp_path / "out2").read_text()
    assert "FLOPs removed" not in text

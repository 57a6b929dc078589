"""Report: summary pooling, weight selection, claim verdicts and plots, from synthetic rows."""

import json
import subprocess
import sys

import pytest

from smoothcompress import report

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
    claims = {(c["claim"][:2], c["setting"]): c["verdict"] for c in report.assess_claims(rows)}
    assert claims[("2.", "nuclear λ=0.01, svd-global-channel")] == verdict


def test_mixed_splits_are_refused(tmp_path):
    rows = _rows("val") + [dict(r, split="test") for r in _rows()]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="mixes rows of several splits"):
        report.load_results(tmp_path)


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
        "import sys, matplotlib; matplotlib.use('svg'); from smoothcompress import report; "
        f"report.write_report({str(folder)!r}, {str(tmp_path / 'out')!r}); "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "False"]
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_results_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="smoothcompress sweep"):
        report.load_results(tmp_path)

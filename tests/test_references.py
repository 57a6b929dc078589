"""Reference rows: the network trained small, on the plot and against every compressed cell."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoothcompress.study import report
from smoothcompress.study.references import KINDS, RATE_SLACK, against_references, reference_at, reference_points
from smoothcompress.study.summary import summarize


def _small_rows(widths=((9, 230_000, 0.78), (7, 140_000, 0.75), (5, 70_000, 0.70)), seeds=(0, 1)):
    rows = []
    for width, params, acc in widths:
        for seed in seeds:
            rows.append(
                {
                    "run": f"w{width}-s{seed}", "model": "resnet18", "width": width, "dataset": "cifar10",
                    "dataset_sha256": "abc", "split": "test", "reg": "none", "weight": 0.0, "seed": seed,
                    "method": "dense", "label": "dense", "rate_requested": 0.0, "accuracy": acc + 0.01 * seed,
                    "params_dense": params, "wall_s": 0.1, "train_wall_s": 1.0,
                }
            )  # fmt: skip
    return rows


def test_points_are_rates_against_the_dense_size_pooled_over_seeds():
    points = reference_points(_small_rows(), 700_000)
    assert [p["width"] for p in points] == [9, 7, 5]
    assert points[0]["rate"] == pytest.approx(1 - 230_000 / 700_000)
    assert points[0]["acc"] == pytest.approx(0.785) and points[0]["n"] == 2


def test_no_dense_row_is_refused():
    with pytest.raises(ValueError, match="no dense row"):
        reference_points([{**r, "label": "svd"} for r in _small_rows()], 700_000)


def test_penalised_runs_are_left_out_with_a_warning_not_pooled_as_seeds():
    penalised = [
        {**r, "run": f"nuc-{r['run']}", "reg": "nuclear", "weight": 1e-3, "accuracy": 0.1} for r in _small_rows()
    ]
    with pytest.warns(UserWarning, match=r"6 penalised run\(s\) are left out \(nuc-w5-s0, "):
        points = reference_points(_small_rows() + penalised, 700_000)
    assert points == reference_points(_small_rows(), 700_000)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no dense row of an unpenalised run"):
        reference_points(penalised, 700_000)


def test_a_reference_of_another_model_is_warned_of(tmp_path):
    tier = _write(tmp_path / "tier", _tier_rows())
    small = _write(tmp_path / "small", [{**r, "model": "mlp"} for r in _small_rows()])
    with pytest.warns(UserWarning, match=r"reference model\(s\) mlp are not among the results' \(resnet18\)"):
        report.write_report(tier, tmp_path / "out", reference=small)


@given(st.floats(0.0, 1.0))
def test_interpolation_stays_between_neighbours_and_never_extrapolates(rate):
    points = reference_points(_small_rows(), 700_000)
    got = reference_at(points, rate)
    if rate < points[0]["rate"] - RATE_SLACK or rate > points[-1]["rate"] + RATE_SLACK:
        assert got is None
    else:
        accs = [p["acc"] for p in points]
        assert min(accs) - 1e-12 <= got <= max(accs) + 1e-12


def _tier_rows():
    rows = []
    for label, rates, acc in (("dense", [0.0], 0.83), ("svd-seq-global-channel", [0.7, 0.8, 0.95], 0.80)):
        for rate in rates:
            rows.append(
                {
                    "run": "none-s0", "model": "resnet18", "width": 16, "dataset": "cifar10", "dataset_sha256": "abc",
                    "split": "test", "reg": "none", "weight": 0.0, "seed": 0, "method": label.split("-global")[0],
                    "label": label, "rate_requested": rate, "rate_achieved": rate, "accuracy": acc - 0.1 * rate,
                    "params_dense": 700_000, "wall_s": 0.1, "train_wall_s": 1.0,
                }
            )  # fmt: skip
    return rows


def test_cells_are_compared_at_their_achieved_rate():
    points = reference_points(_small_rows(), 700_000)
    comparisons = against_references(summarize(_tier_rows()), points)
    assert {c["rate"] for c in comparisons} == {0.7, 0.8}  # 95% lies beyond the trained-small points
    c = next(c for c in comparisons if c["rate"] == 0.7)
    assert c["margin"] == pytest.approx(c["acc"] - reference_at(points, 0.7))


def _write(path, rows):
    path.mkdir(parents=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_has_the_section_and_the_plot(tmp_path):
    tier, small = _write(tmp_path / "tier", _tier_rows()), _write(tmp_path / "small", _small_rows())
    md = report.write_report(tier, tmp_path / "out", reference=small).read_text()
    assert "## Against the network trained small" in md and "resnet18-w9" in md
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 0


def test_a_reference_on_other_data_is_refused(tmp_path):
    tier = _write(tmp_path / "tier", _tier_rows())
    small = _write(tmp_path / "small", [{**r, "dataset_sha256": "other"} for r in _small_rows()])
    with pytest.raises(ValueError, match="same data and split"):
        report.write_report(tier, tmp_path / "out", reference=small)


def test_the_factorized_architecture_trained_from_scratch_is_a_curve_of_its_own(tmp_path):
    factorized = [
        {**r, "width": 16, "variant": f"lowrank_rate={rate}", "params_dense": params, "run": f"{r['run']}-{rate}"}
        for rate, params in ((0.7, 210_000), (0.8, 140_000))
        for r in _small_rows(widths=((16, params, 0.8),))
    ]
    points = reference_points(_small_rows() + factorized, 700_000)
    assert {p["kind"] for p in points} == set(KINDS)
    assert sum(p["kind"] == KINDS[1] for p in points) == 2  # not pooled with each other nor with the widths
    comparisons = against_references(summarize(_tier_rows()), points)
    mine = [c for c in comparisons if c["kind"] == KINDS[1]]
    assert mine and all(0.7 <= c["rate_achieved"] <= 0.8 for c in mine)
    tier = _write(tmp_path / "tier", _tier_rows())
    small, lowrank = _write(tmp_path / "small", _small_rows()), _write(tmp_path / "lowrank", factorized)
    md = report.write_report(tier, tmp_path / "out", reference=[small, lowrank]).read_text()
    assert "Against the network factorized from scratch" in md and "resnet18-w16 lowrank_rate=0.8" in md


def test_a_cell_just_outside_the_curve_takes_the_end_point_and_no_further():
    points = reference_points(_small_rows(), 700_000)
    first, last = points[0], points[-1]
    assert reference_at(points, first["rate"] - 0.003) == first["acc"]
    assert reference_at(points, last["rate"] + 0.003) == last["acc"]
    assert reference_at(points, first["rate"] - 0.02) is None and reference_at(points, last["rate"] + 0.02) is None

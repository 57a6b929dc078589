"""assess_targets and assess_floors: the best smooth model, compressed, against the dense baseline and fixed
accuracies."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothcompress.cli import main
from smoothcompress.files import append_jsonl
from smoothcompress.study import report
from smoothcompress.study.targets import TARGETS, assess_floors, assess_targets, floors_table, targets_table

SETTINGS = [("none", 0.0), ("nuclear", 1e-3), ("second", 1e-4)]
LABELS = {"svd-global-channel": "svd", "svd+bn-global-channel": "svd+bn", "magnitude": "magnitude"}
RATES = (0.7, 0.8)


def _row(reg, weight, seed, label, method, rate, acc):
    return {"run": f"{reg}{weight:g}-s{seed}", "model": "resnet18", "width": 16, "dataset": "digits",
            "dataset_sha256": "abc", "split": "test", "reg": reg, "weight": weight, "seed": seed,
            "method": method, "label": label, "rate_requested": rate, "rate_achieved": rate,
            "accuracy": acc, "wall_s": 0.1, "train_wall_s": 1.0}  # fmt: skip


def _rows(acc, seeds=(0, 1, 2), offset=lambda key, seed: 0.001 * seed):
    """``acc[(reg, label, rate)]`` (label "dense" at rate 0) plus ``offset(key, seed)`` for every seed."""
    rows = []
    for (reg, weight), seed in itertools.product(SETTINGS, seeds):
        key = (reg, "dense", 0.0)
        rows.append(_row(reg, weight, seed, "dense", "dense", 0.0, acc[key] + offset(key, seed)))
        for (label, method), rate in itertools.product(LABELS.items(), RATES):
            key = (reg, label, rate)
            if key in acc:
                rows.append(_row(reg, weight, seed, label, method, rate, acc[key] + offset(key, seed)))
    return rows


# Every cell of _rows: each setting's dense row, then each setting, label and rate.
KEYS = [(reg, "dense", 0.0) for reg, _ in SETTINGS]
KEYS += [(reg, lab, r) for (reg, _), lab, r in itertools.product(SETTINGS, LABELS, RATES)]

accuracy = st.floats(0.1, 0.95, allow_nan=False)
offsets = st.floats(-0.02, 0.02, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_the_gap_is_the_best_smooth_low_rank_seed_mean_against_the_baseline_dense(data):
    keys = KEYS
    acc = {k: data.draw(accuracy, label=str(k)) for k in keys}
    for k in data.draw(st.lists(st.sampled_from(keys[len(SETTINGS) :]), max_size=4), label="missing cells"):
        acc.pop(k, None)  # a cell not run: never a candidate
    seeds = (0, 1, 2)
    shift = {(k, s): data.draw(offsets, label=f"{k} seed {s}") for k in keys for s in seeds}
    verdicts = assess_targets(_rows(acc, seeds, lambda key, seed: shift[(key, seed)]))

    def mean(key):
        return acc[key] + sum(shift[(key, s)] for s in seeds) / len(seeds)

    expected = {}
    for rate in sorted(TARGETS):
        # pruning and the baseline are no candidates
        cells = [(reg, lab, rate) for (reg, _), lab in itertools.product(SETTINGS[1:], LABELS) if "svd" in lab]
        cells = [k for k in cells if k in acc]
        if cells:
            expected[rate] = max(mean(k) for k in cells) - mean(("none", "dense", 0.0))
    assert [v["rate"] for v in verdicts] == list(expected)
    for v in verdicts:
        assert v["gap"] == pytest.approx(100 * expected[v["rate"]], abs=1e-9)
        assert v["met"] == (100 * expected[v["rate"]] >= -TARGETS[v["rate"]] - 1e-9)
        assert v["best"]["n"] == 3 and v["best"]["label"] != "magnitude"


def test_the_svd_schemes_are_judged_apart_when_a_tensor_scheme_wins():
    acc = {(reg, "dense", 0.0): 0.80 for reg, _ in SETTINGS}
    for (reg, _), lab, rate in itertools.product(SETTINGS, LABELS, RATES):
        acc[(reg, lab, rate)] = 0.70
    acc[("nuclear", "svd+bn-global-channel", 0.7)] = 0.78
    rows = _rows(acc, seeds=(0,), offset=lambda key, seed: 0.0)
    rows += [
        {**_row("nuclear", 1e-3, 0, "cp+bn-global", "cp+bn", 0.7, 0.799), "scheme": "cp"},
        {**_row("none", 0.0, 0, "cp+bn-global", "cp+bn", 0.7, 0.9), "scheme": "cp"},
    ]
    v = next(v for v in assess_targets(rows) if v["rate"] == 0.7)
    assert v["best"]["label"] == "cp+bn-global" and v["met"] and v["gap"] == pytest.approx(-0.1)
    assert v["best_svd"]["label"] == "svd+bn-global-channel" and not v["met_svd"]
    assert v["gap_svd"] == pytest.approx(-2.0)
    table = targets_table([v])
    assert "SVD schemes only" in table and "-2.00" in table and "**no**" in table
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines())
    plain = next(v for v in assess_targets(_rows(acc, seeds=(0,), offset=lambda key, seed: 0.0)) if v["rate"] == 0.7)
    assert plain["best_svd"] == plain["best"] and "SVD schemes only" not in targets_table([plain])


def _fixed():
    acc = {(reg, "dense", 0.0): 0.80 for reg, _ in SETTINGS}
    for (reg, _), lab, rate in itertools.product(SETTINGS, LABELS, RATES):
        acc[(reg, lab, rate)] = 0.30
    acc[("nuclear", "svd+bn-global-channel", 0.7)] = 0.797  # 0.3 points below: met
    acc[("second", "svd-global-channel", 0.8)] = 0.70  # 10 points below: missed
    acc[("nuclear", "magnitude", 0.8)] = 0.80  # pruning: never the best smooth low-rank model
    acc[("none", "svd-global-channel", 0.8)] = 0.79  # the baseline: never a candidate
    return acc


def test_the_winner_is_named_and_judged():
    at70, at80 = assess_targets(_rows(_fixed()))
    assert (at70["best"]["setting"], at70["best"]["label"], at70["met"]) == (
        "nuclear λ=0.001",
        "svd+bn-global-channel",
        True,
    )
    assert at70["gap"] == pytest.approx(-0.3)
    assert (at80["best"]["setting"], at80["best"]["label"], at80["met"]) == (
        "second λ=0.0001",
        "svd-global-channel",
        False,
    )
    assert at80["gap"] == pytest.approx(-10.0)
    table = targets_table([at70, at80])
    assert "| yes |" in table and "| **no** |" in table and "-10.00" in table and "3 seeds" in table


def test_no_baseline_or_no_rate_means_no_verdict():
    rows = [r for r in _rows(_fixed()) if r["reg"] != "none"]
    assert assess_targets(rows) == []
    assert assess_targets(_rows(_fixed()), {0.9: 1.0}) == []


def test_the_report_has_a_targets_section(tmp_path):
    for row in _rows(_fixed(), seeds=(0,)):
        append_jsonl(tmp_path / "results.jsonl", row)
    text = report.write_report(tmp_path / "results.jsonl", tmp_path / "out").read_text()
    assert "## Targets" in text and "1 seed)" in text


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_a_floor_judges_the_best_smooth_low_rank_seed_mean(data):
    keys = KEYS
    acc = {k: data.draw(accuracy, label=str(k)) for k in keys}
    seeds = (0, 1)
    shift = {(k, s): data.draw(offsets, label=f"{k} seed {s}") for k in keys for s in seeds}
    floors = {rate: data.draw(st.floats(0.05, 0.95), label=f"floor at {rate}") for rate in RATES}
    verdicts = assess_floors(_rows(acc, seeds, lambda key, seed: shift[(key, seed)]), floors)
    assert [v["rate"] for v in verdicts] == list(RATES)
    for v in verdicts:
        # brute force: the penalised settings' SVD cells (pruning and the baseline are no candidates)
        means = {
            (reg, lab): acc[(reg, lab, v["rate"])] + sum(shift[((reg, lab, v["rate"]), s)] for s in seeds) / 2
            for (reg, _), lab in itertools.product(SETTINGS[1:], LABELS)
            if "svd" in lab
        }
        best = max(means.values())
        assert v["best"]["acc"] == pytest.approx(best, abs=1e-12) and v["candidates"] == len(means)
        assert v["floor"] == floors[v["rate"]] and v["met"] == (best >= v["floor"] - 1e-11)


def test_floors_need_no_baseline():
    rows = [r for r in _rows(_fixed()) if r["reg"] != "none"]
    at70, at80 = assess_floors(rows, {0.7: 0.79, 0.8: 0.71})
    assert at70["met"] and not at80["met"] and at70["baseline_dense"] is None and at70["best_baseline"] is None
    table = floors_table([at70, at80])
    assert "≥ 79" in table and "≥ 71" in table and "| yes |" in table and "**no**" in table
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines())


@pytest.mark.parametrize("floors", [{0.7: 91.0}, {70.0: 0.91}, {0.0: 0.5}, {0.7: 1.0}])
def test_a_floor_out_of_range_is_refused(floors, tmp_path):
    with pytest.raises(ValueError, match="fractions in"):
        assess_floors(_rows(_fixed()), floors)
    with pytest.raises(ValueError, match="fractions in"):  # before anything is read or written
        report.write_report(tmp_path / "no-such-sweep", tmp_path / "out", floors=floors)
    assert not (tmp_path / "out").exists()


def test_the_report_judges_floors_given_on_the_command_line(tmp_path, capsys):
    for row in _rows(_fixed(), seeds=(0,)):
        append_jsonl(tmp_path / "results.jsonl", row)
    out = tmp_path / "out"
    assert (
        main(["report", str(tmp_path / "results.jsonl"), "-o", str(out), "--floor", "70:79", "--floor", "80:75"]) == 0
    )
    text = (out / "report.md").read_text()
    section = text[text.index("## Floors") :].split("\n## ")[0]
    assert "79% at 70%, 75% at 80%" in section and "| yes |" in section and "**no**" in section
    assert "80.00 (1 seed)" in section  # the baseline's dense accuracy beside the verdict


def test_floors_without_smooth_low_rank_rows_are_said_to_wait(tmp_path):
    for row in _rows(_fixed(), seeds=(0,)):
        if row["reg"] == "none":
            append_jsonl(tmp_path / "results.jsonl", row)
    text = report.write_report(tmp_path / "results.jsonl", tmp_path / "out", floors={0.7: 0.9}).read_text()
    assert "No smooth model has low-rank rows at a parameter budget at these rates." in text


def test_a_floor_at_a_rate_the_sweep_has_not_is_named_as_not_judged(tmp_path):
    for row in _rows(_fixed(), seeds=(0,)):
        append_jsonl(tmp_path / "results.jsonl", row)
    text = report.write_report(tmp_path / "results.jsonl", tmp_path / "out", floors={0.7: 0.9, 0.6: 0.9}).read_text()
    assert "| 70% | ≥ 90 |" in text and "low-rank rows at a parameter budget at 60%: not judged." in text


def test_a_floor_rate_stands_for_the_requested_rate_within_half_a_point():
    rows = [dict(r, rate_requested=0.5392) if r["rate_requested"] == 0.7 else r for r in _rows(_fixed(), seeds=(0,))]
    (v,) = assess_floors(rows, {0.54: 0.79})
    assert (v["rate"], v["floor_rate"], v["met"]) == (0.5392, 0.54, True)
    assert assess_floors(rows, {0.55: 0.79}) == []


def test_a_floor_rate_given_twice_is_a_command_line_error(tmp_path, capsys):
    for row in _rows(_fixed(), seeds=(0,)):
        append_jsonl(tmp_path / "results.jsonl", row)
    argv = ["report", str(tmp_path / "results.jsonl"), "-o", str(tmp_path / "out"), "--floor", "70:91"]
    assert main([*argv, "--floor", "70:88"]) == 2
    assert "--floor gives one rate twice" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "floor", ["70", "70:", "seventy:91", "70:91:1", "0:91", "70:100", "-5:50", "70:0.91", "0.7:91", "1:50"]
)
def test_a_malformed_floor_is_a_command_line_error(tmp_path, capsys, floor):
    for row in _rows(_fixed(), seeds=(0,)):
        append_jsonl(tmp_path / "results.jsonl", row)
    assert main(["report", str(tmp_path / "results.jsonl"), "-o", str(tmp_path / "out"), f"--floor={floor}"]) == 2
    err = capsys.readouterr().err
    assert "--floor takes RATE:ACCURACY in percent" in err and repr(floor) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", ["-flops", "-flops-matched"])
def test_rows_at_a_flops_budget_are_no_candidates(suffix):
    rows = _rows(_fixed(), seeds=(0,))
    rows.append(_row("nuclear", 1e-3, 0, f"svd-global-channel{suffix}", "svd", 0.7, 0.99))
    (at70,) = [v for v in assess_targets(rows) if v["rate"] == 0.7]
    (floor70,) = assess_floors(rows, {0.7: 0.9})
    assert at70["best"]["label"] == floor70["best"]["label"] == "svd+bn-global-channel"
    assert at70["candidates"] == floor70["candidates"] == 4 and not floor70["met"]

"""Sharded sweeps: disjoint slices of the grid, one folder per shard, merged by the report."""

import os
import shutil
import socket

import pytest
from test_experiment import TINY  # the tiny digits grid: two MLP runs (baseline, nuclear), svd and magnitude

from smoothcompress.cli import main
from smoothcompress.files import read_jsonl, write_jsonl
from smoothcompress.study import report
from smoothcompress.study.experiment import SweepConfig, parse_shard, sweep
from smoothcompress.study.results import results_files


def _key(rows):
    """What must not depend on how the grid was split: the cell and its accuracy."""
    return sorted((r["run"], r["label"], r["rate_requested"], r["accuracy"]) for r in rows)


def _reuse_models(src, dst):
    """Give a sweep folder the trained runs of another (same settings): the sweep then skips their training.

    Training is deterministic on CPU (tests/test_resume.py); these tests are about slicing and merging.
    """
    shutil.copytree(src / "runs", dst / "runs", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One unsharded sweep of TINY and the same grid as shards 1/2 and 2/2 into one folder."""
    whole, sharded = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("sharded")
    sweep(SweepConfig.from_dict(TINY, out=whole))
    for i in (1, 2):
        _reuse_models(whole, sharded / f"shard-{i}-of-2")
    sweep(SweepConfig.from_dict(TINY, out=sharded), shard=(1, 2))
    sweep(SweepConfig.from_dict(TINY), out=sharded, shard="2/2")
    return whole, sharded


def test_shards_together_give_the_rows_of_the_unsharded_sweep(folders):
    whole, sharded = folders
    first, second = (read_jsonl(sharded / f"shard-{i}-of-2" / "results.jsonl") for i in (1, 2))
    assert first and second and not {r["run"] for r in first} & {r["run"] for r in second}
    assert results_files(sharded) == [sharded / f"shard-{i}-of-2" / "results.jsonl" for i in (1, 2)]
    merged, spectra = report.load_results(sharded)
    assert _key(merged) == _key(read_jsonl(whole / "results.jsonl"))
    assert len(spectra) == 2 and {s["shard"] for s in spectra} == {1, 2}
    fingerprint = SweepConfig.from_dict(TINY).fingerprint()
    assert {(r["shard"], r["shards"], r["sweep_fingerprint"]) for r in merged} == {
        (1, 2, fingerprint),
        (2, 2, fingerprint),
    }
    assert {(r["shard"], r["shards"], r["sweep_fingerprint"]) for r in read_jsonl(whole / "results.jsonl")} == {
        (1, 1, fingerprint)
    }


def test_the_report_merges_the_shards_of_a_folder(folders, tmp_path):
    _, sharded = folders
    md = report.write_report(sharded, tmp_path / "rep").read_text()
    assert "- shards 1, 2 of 2" in md and SweepConfig.from_dict(TINY).fingerprint() in md
    assert "rows: 10 from 2 training runs" in md


def test_a_missing_shard_is_reported(folders, capsys):
    _, sharded = folders
    with pytest.warns(UserWarning, match=r"shards 1 of 2 \(missing: 2\)"):
        rows, _ = report.load_results(sharded / "shard-1-of-2")
    assert report.missing_shards(rows) == [2]
    assert main(["report", str(sharded / "shard-1-of-2" / "results.jsonl")]) == 0
    assert "warning: shards 1 of 2 (missing: 2)" in capsys.readouterr().err


def test_a_shard_of_another_config_is_refused(folders, tmp_path):
    _, sharded = folders
    mixed = tmp_path / "mixed"
    shutil.copytree(sharded / "shard-1-of-2", mixed / "shard-1-of-2")
    other = {**TINY, "compress": {**TINY["compress"], "rates": [0.5]}}  # same runs, so the same slices
    _reuse_models(sharded / "shard-2-of-2", mixed / "shard-2-of-2")
    sweep(SweepConfig.from_dict(other, out=mixed), shard=(2, 2))
    a, b = SweepConfig.from_dict(TINY).fingerprint(), SweepConfig.from_dict(other).fingerprint()
    with pytest.raises(ValueError, match=rf"shard-1-of-2.*shard-2-of-2.*different sweep configs.*{a} and {b}"):
        report.load_results(mixed)
    files = [mixed / f"shard-{i}-of-2" / "results.jsonl" for i in (1, 2)]
    with pytest.raises(ValueError, match="different sweep configs"):
        report.load_results(files)  # the same, given as files


def test_overlapping_or_unfingerprinted_files_are_refused(folders, tmp_path):
    whole, sharded = folders
    with pytest.raises(ValueError, match="split into 1 and 2 shards"):
        report.load_results([whole, sharded / "shard-2-of-2"])
    first = sharded / "shard-1-of-2" / "results.jsonl"
    copy = shutil.copy(first, tmp_path / "copy.jsonl")
    with pytest.raises(ValueError, match="both hold run mlp-w128-none-s0, dense at rate 0"):
        report.load_results([first, copy])
    old = write_jsonl(
        tmp_path / "old.jsonl", [{k: v for k, v in r.items() if k != "sweep_fingerprint"} for r in read_jsonl(first)]
    )
    with pytest.raises(ValueError, match="old.jsonl has no sweep fingerprint"):
        report.load_results([old, sharded / "shard-2-of-2"])


def test_a_shard_resumes_like_a_sweep_and_locks_only_its_folder(folders, capsys):
    _, sharded = folders
    results = sharded / "shard-1-of-2" / "results.jsonl"
    before = _key(read_jsonl(results))
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n")  # as if killed before the last row
    assert sweep(SweepConfig.from_dict(TINY, out=sharded), shard=(1, 2)) == results
    assert _key(read_jsonl(results)) == before and "skipping training" in capsys.readouterr().out
    lock = results.parent / ".lock"
    lock.write_text(f"{os.getpid()}@{socket.gethostname()}")  # shard 1 is busy elsewhere
    try:
        with pytest.raises(FileExistsError, match="shard-1-of-2"):
            sweep(SweepConfig.from_dict(TINY, out=sharded), shard=(1, 2))
        sweep(SweepConfig.from_dict(TINY, out=sharded), shard=(2, 2))  # shard 2 runs beside it
    finally:
        lock.unlink()


def test_a_changed_grid_that_deals_runs_anew_is_refused(folders):
    _, sharded = folders
    grown = {**TINY, "grid": {**TINY["grid"], "regularizers": [*TINY["grid"]["regularizers"], {"kind": "first"}]}}
    cfg = SweepConfig.from_dict(grown, out=sharded)
    with pytest.raises(ValueError, match="no longer runs .*new out folder"):
        sweep(cfg, shard=(1, 2))  # refused before training anything
    assert {r["run"] for r in read_jsonl(sharded / "shard-1-of-2" / "results.jsonl")} == {"mlp-w128-none-s0"}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_more_seeds_leave_every_run_in_its_shard(n):
    grid = {"seeds": [0], "regularizers": [{"kind": "none"}, {"kind": "nuclear", "weight": [1e-3, 1e-2]}]}
    before = SweepConfig.from_dict({**TINY, "grid": grid})
    after = SweepConfig.from_dict({**TINY, "grid": {**grid, "seeds": [0, 1, 2]}})
    for i in range(1, n + 1):
        assert set(before.shard_runs((i, n))) <= set(after.shard_runs((i, n)))


def test_slices_are_disjoint_balanced_and_independent_of_the_file_order():
    grid = {"seeds": [0, 1], "regularizers": [{"kind": "none"}, {"kind": "nuclear", "weight": [1e-3, 1e-2]}]}
    cfg = SweepConfig.from_dict({**TINY, "grid": grid})
    slices = [cfg.shard_runs((i, 4)) for i in range(1, 5)]
    assert sorted(len(s) for s in slices) == [1, 1, 2, 2]
    assert sum(len(s) for s in slices) == len(cfg.runs) and set().union(*slices) == set(cfg.runs)
    assert cfg.shard_runs((1, 1)) == cfg.runs
    backwards = {**grid, "regularizers": grid["regularizers"][::-1], "seeds": [1, 0]}
    flipped = SweepConfig.from_dict({**TINY, "grid": backwards})
    assert [set(flipped.shard_runs((i, 4))) for i in range(1, 5)] == [set(s) for s in slices]
    assert flipped.fingerprint() == cfg.fingerprint()


def test_the_fingerprint_ignores_where_and_how_fast_not_what():
    base = SweepConfig.from_dict(TINY).fingerprint()
    elsewhere = {**TINY, "out": "x", "train": {**TINY["train"], "data": "/data", "device": "cuda"}}
    assert SweepConfig.from_dict(elsewhere, out="y").fingerprint() == base
    assert SweepConfig.from_dict({**TINY, "train": {**TINY["train"], "epochs": 3}}).fingerprint() != base
    methods = {**TINY["compress"], "methods": [{"method": "svd", "scheme": "spatial"}, {"method": "magnitude"}]}
    assert SweepConfig.from_dict({**TINY, "compress": methods}).fingerprint() != base
    unwritten = {**TINY, "train": {**TINY["train"], "reg_every": None}}  # None is its default: as if left out
    assert SweepConfig.from_dict(unwritten).fingerprint() == base


@pytest.mark.parametrize(
    "spec, message",
    [
        ("3/2", r"shard 3/2: need 1 <= I <= N"),
        ("0/0", r"shard 0/0: need 1 <= I <= N"),
        ("0/2", r"numbered from 1"),
        ("a/b", r"write I/N with whole numbers"),
        ("1/²", r"write I/N with whole numbers"),
        ("1", r"write I/N"),
        ((1, 2, 3), r"give \(i, n\)"),
        ((1.0, 2), r"give \(i, n\)"),
    ],
)
def test_bad_shard_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_shard(spec)


def test_bad_shards_fail_in_one_line_before_anything_runs(tmp_path, capsys):
    assert main(["sweep", "demo", "--out", str(tmp_path / "s"), "--shard", "3/2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smoothcompress sweep: error: shard 3/2")
    with pytest.raises(ValueError, match="only 2 training run"):
        sweep(SweepConfig.from_dict(TINY, out=tmp_path / "t"), shard=(3, 3))
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()
    assert parse_shard(None) == parse_shard("1/1") == (1, 1) and parse_shard(" 2/4 ") == (2, 4)

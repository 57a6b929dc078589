"""A sweep's plan: each run's shard, and the epochs and cells done, read from the output folder without running."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothcompress.cli import main
from smoothcompress.study.experiment import SweepConfig, sweep
from smoothcompress.study.plan import plan_table, sweep_plan

TINY = {
    "out": "unused",
    "train": {"dataset": "digits", "model": "mlp", "width": 32, "epochs": 2, "batch_size": 128, "device": "cpu"},
    "grid": {"seeds": [0], "regularizers": [{"kind": "none"}, {"kind": "nuclear", "weight": 0.01}]},
    "compress": {"rates": [0.5, 0.8], "methods": [{"method": "svd"}, {"method": "magnitude"}]},
}
CELLS = 1 + 2 * 2  # the dense row and two methods at two rates


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """A sweep of two shards of which only shard 1 has run."""
    out = tmp_path_factory.mktemp("plan")
    sweep(SweepConfig.from_dict(TINY, out=out), shard="1/2")
    return out


def test_a_folder_with_one_shard_done_lists_both_shards_with_their_progress(half_done):
    plan = sweep_plan(SweepConfig.from_dict(TINY), out=half_done)
    assert [(p["shard"], p["run"], p["epochs_done"], p["epochs"], p["cells_done"], p["status"]) for p in plan] == [
        ("1/2", "mlp-w32-none-s0", 2, 2, CELLS, ""),
        ("2/2", "mlp-w32-nuclear0.01-s0", 0, 2, 0, ""),
    ]
    table = plan_table(plan)
    assert "| 1/2 | mlp-w32-none-s0 | mlp w32 | none | 0 | — | 2 / 2 | — | 5 / 5 | ok |" in table
    assert "| 2/2 | mlp-w32-nuclear0.01-s0 | mlp w32 | nuclear 0.01 | 0 | — | 0 / 2 | — | 0 / 5 | ok |" in table


def test_a_run_the_sweep_would_refuse_says_why(half_done):
    changed = SweepConfig.from_dict({**TINY, "train": {**TINY["train"], "lr": 0.05}})
    done, todo = sweep_plan(changed, out=half_done)
    assert done["status"].startswith("settings differ (lr: ") and done["status"].endswith("-> 0.05)")
    assert todo["status"] == ""  # no folder yet: nothing to refuse


def test_an_unreadable_run_config_is_that_run_s_status(half_done, tmp_path):
    folder = tmp_path / "shard-1-of-2" / "runs" / "mlp-w32-none-s0"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("lr = [\n")
    first, _ = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)
    assert first["status"].startswith("config.toml unreadable (") and "not valid TOML" in first["status"]


def test_run_folders_the_grid_no_longer_has_are_listed(half_done):
    wider = SweepConfig.from_dict({**TINY, "train": {**TINY["train"], "width": 16}})
    plan = sweep_plan(wider, out=half_done, shard="1/2")
    assert [(p["run"], p["status"], p["epochs_done"], p["cells_done"]) for p in plan] == [
        ("mlp-w16-none-s0", "", 0, 0),
        ("mlp-w32-none-s0", "not in this grid (the sweep leaves it alone)", 2, CELLS),
    ]
    table = plan_table(plan)
    assert "| 1/2 | mlp-w32-none-s0 | — | — | — | — | 2 / — | — | 5 / 5 | not in this grid (the sweep" in table


def test_rows_of_a_run_dealt_to_another_shard_are_named(tmp_path):
    (tmp_path / "shard-1-of-2").mkdir()
    row = '{"run": "mlp-w32-nuclear0.01-s0", "label": "dense", "rate_requested": 0.0}\n'
    (tmp_path / "shard-1-of-2" / "results.jsonl").write_text(row)
    plan = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path, shard="1/2")
    assert [(p["run"], p["status"], p["cells_done"]) for p in plan] == [
        ("mlp-w32-none-s0", "the sweep refuses this folder: it holds rows of mlp-w32-nuclear0.01-s0", 0),
        ("mlp-w32-nuclear0.01-s0", "another shard's run (its rows stop the sweep)", 1),
    ]
    with pytest.raises(ValueError, match="holds rows of mlp-w32-nuclear0.01-s0"):  # as the sweep itself says
        sweep(SweepConfig.from_dict(TINY, out=tmp_path), shard="1/2")


def test_a_run_folder_of_another_shard_without_rows_is_left_alone(tmp_path):
    folder = tmp_path / "shard-1-of-2" / "runs" / "mlp-w32-nuclear0.01-s0"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "seconds": 1.0}\n')
    own, other = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path, shard="1/2")
    assert (own["status"], other["status"], other["epochs_done"]) == ("", "another shard's run (left alone)", 1)


def test_an_unsharded_sweep_beside_shard_folders_is_listed_too(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "shard-1-of-2").mkdir()
    assert [p["shard"] for p in sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)] == ["", "", "1/2", "2/2"]


@pytest.mark.parametrize("names", [["shard-1-of-0"], ["shard-3-of-2", "shard-0-of-1"], ["shard-x-of-2"]])
def test_folders_that_are_not_shards_are_ignored(tmp_path, names):
    for name in names:
        (tmp_path / name).mkdir()
    assert [p["shard"] for p in sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)] == ["", ""]


def test_more_shard_folders_than_runs_says_the_grid_changed(tmp_path):
    (tmp_path / "shard-1-of-3").mkdir()
    with pytest.raises(ValueError, match=r"holds shard-\*-of-3 folders, but this grid has 2 training run\(s\)"):
        sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)


@pytest.mark.parametrize("files, trained", [(["results.jsonl", "spectra.jsonl"], True), (["results.jsonl"], False)])
def test_a_copy_without_run_folders_is_trained_when_the_sweep_would_not_retrain_it(half_done, tmp_path, files, trained):
    (tmp_path / "shard-1-of-2").mkdir()
    for name in files:
        (tmp_path / "shard-1-of-2" / name).write_bytes((half_done / "shard-1-of-2" / name).read_bytes())
    first, _ = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)
    assert (first["epochs_done"], first["training_left_s"], first["cells_done"]) == (2 if trained else 0, None, CELLS)


def test_a_run_still_training_has_its_time_left(tmp_path):
    run = tmp_path / "runs" / "mlp-w32-none-s0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "epochs": 2, "seconds": 30.0, "eval_seconds": 6.0}\n')
    first, _ = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)
    assert (first["epochs_done"], first["training_left_s"]) == (1, 36.0)
    assert "| 1 / 2 | 36 s |" in plan_table([first])
    (run / "config.toml").write_text('model = "mlp"\nwidth = 32\nepochs = 9\n')  # a run the sweep would refuse
    first, _ = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)
    assert first["status"].startswith("settings differ (") and first["training_left_s"] is None


def test_a_shard_given_is_the_only_one_listed(half_done):
    (only,) = sweep_plan(SweepConfig.from_dict(TINY), out=half_done, shard="2/2")
    assert (only["shard"], only["cells_done"]) == ("2/2", 0)


def test_all_shards_of_a_count_are_listed_before_any_has_run(tmp_path):
    plan = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path, shard="all/2")
    assert [(p["shard"], p["run"]) for p in plan] == [("1/2", "mlp-w32-none-s0"), ("2/2", "mlp-w32-nuclear0.01-s0")]
    assert sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path, shard=" ALL / 2 ") == plan
    with pytest.raises(ValueError, match="write I/N with whole numbers"):
        sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path, shard="all/x")
    for bad in ("all/3", "all/0"):
        with pytest.raises(ValueError, match=rf"shard '{bad}': N must lie in 1..2, the number of training runs"):
            sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path, shard=bad)


def test_an_empty_folder_is_planned_unsharded(tmp_path):
    plan = sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path / "not-yet")
    assert [(p["shard"], p["epochs_done"], p["cells_done"]) for p in plan] == [("", 0, 0), ("", 0, 0)]
    assert not (tmp_path / "not-yet").exists()  # planning writes nothing


def test_shard_folders_of_two_counts_ask_for_a_shard(tmp_path):
    (tmp_path / "shard-1-of-2").mkdir()
    (tmp_path / "shard-1-of-3").mkdir()
    with pytest.raises(ValueError, match=r"shard folders of 2 and 3 shards; name the shard to plan \(--shard I/N\)"):
        sweep_plan(SweepConfig.from_dict(TINY), out=tmp_path)


@settings(max_examples=10, deadline=None)
@given(seeds=st.integers(1, 4), data=st.data())
def test_the_shards_of_a_plan_cover_the_grid_once(tmp_path_factory, seeds, data):
    cfg = SweepConfig.from_dict({**TINY, "grid": {**TINY["grid"], "seeds": list(range(seeds))}})
    n = data.draw(st.integers(1, len(cfg.runs)))
    folder = tmp_path_factory.mktemp("planned")
    runs = [p["run"] for i in range(1, n + 1) for p in sweep_plan(cfg, out=folder, shard=(i, n))]
    assert sorted(runs) == sorted(s.tag(cfg.train) for s in cfg.runs)


def test_all_shards_are_for_the_plan_only(tmp_path, capsys):
    assert main(["sweep", "demo", "--out", str(tmp_path), "--shard", "all/2"]) == 2
    assert "--shard all/2 lists every shard with --plan; to run, give one shard" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_command_line_says_when_the_folder_is_not_there_yet(tmp_path, capsys):
    assert main(["sweep", "demo", "--plan", "--out", str(tmp_path / "typo")]) == 0
    assert "typo (does not exist yet)" in capsys.readouterr().out


def test_the_command_line_prints_the_plan_and_runs_nothing(half_done, tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(
        'out = "unused"\n[train]\ndataset = "digits"\nmodel = "mlp"\nwidth = 32\nepochs = 2\nbatch_size = 128\n'
        'device = "cpu"\n[grid]\nregularizers = [{ kind = "none" }, { kind = "nuclear", weight = 0.01 }]\n'
        '[compress]\nrates = [0.5, 0.8]\nmethods = [{ method = "svd" }, { method = "magnitude" }]\n'
    )
    before = sorted(p.relative_to(half_done) for p in half_done.rglob("*"))
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(half_done), "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "2 training runs x 5 cells (dense, and 2 methods x 2 rates), fingerprint " in printed
    assert "dataset digits, model mlp, width 32, epochs 2" in printed and "rates: 0.5, 0.8; methods: svd" in printed
    assert "| 2/2 | mlp-w32-nuclear0.01-s0 | mlp w32 | nuclear 0.01 | 0 | — | 0 / 2 | — | 0 / 5 | ok |" in printed
    assert "does not exist yet" not in printed
    assert sorted(p.relative_to(half_done) for p in half_done.rglob("*")) == before

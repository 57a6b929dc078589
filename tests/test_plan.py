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
    assert [(p["shard"], p["run"], p["epochs_done"], p["epochs"], p["cells_done"], p["cells"]) for p in plan] == [
        ("1/2", "mlp-w32-none-s0", 2, 2, CELLS, CELLS),
        ("2/2", "mlp-w32-nuclear0.01-s0", 0, 2, 0, CELLS),
    ]
    table = plan_table(plan)
    assert "| 1/2 | mlp-w32-none-s0 | none | 0 | — | 2 / 2 | 5 / 5 |" in table
    assert "| 2/2 | mlp-w32-nuclear0.01-s0 | nuclear 0.01 | 0 | — | 0 / 2 | 0 / 5 |" in table


def test_a_shard_given_is_the_only_one_listed(half_done):
    (only,) = sweep_plan(SweepConfig.from_dict(TINY), out=half_done, shard="2/2")
    assert (only["shard"], only["cells_done"]) == ("2/2", 0)


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


def test_the_command_line_prints_the_plan_and_runs_nothing(half_done, tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(
        'out = "unused"\n[train]\ndataset = "digits"\nmodel = "mlp"\nwidth = 32\nepochs = 2\nbatch_size = 128\n'
        'device = "cpu"\n[grid]\nregularizers = [{ kind = "none" }, { kind = "nuclear", weight = 0.01 }]\n'
        '[compress]\nrates = [0.5, 0.8]\nmethods = [{ method = "svd" }, { method = "magnitude" }]\n'
    )
    before = sorted(p.relative_to(half_done) for p in half_done.rglob("*"))
    assert main(["sweep", str(tmp_path / "tiny.toml"), "--out", str(half_done), "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "2 training runs x 5 cells (dense + 2 methods x 2 rates), fingerprint " in printed
    assert "train: dataset digits, model mlp, width 32, epochs 2" in printed
    assert "| 2/2 | mlp-w32-nuclear0.01-s0 | nuclear 0.01 | 0 | — | 0 / 2 | 0 / 5 |" in printed
    assert sorted(p.relative_to(half_done) for p in half_done.rglob("*")) == before

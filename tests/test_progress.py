"""Training progress: how far each run of a sweep has got, read from the runs' metrics.jsonl, and its report."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothcompress.cli import main
from smoothcompress.errors import FileContentError
from smoothcompress.study import report
from smoothcompress.study.progress import epochs_table, plot_progress, progress_table, training_progress, with_results


def _epoch(epoch, epochs=4, key="test_acc", acc=None):
    """One epoch row as the trainer writes it (``epochs`` left out when None: rows of older runs)."""
    acc = 0.4 + 0.1 * epoch if acc is None else acc
    row = {"epoch": epoch, "loss": 2.0 / epoch, "train_acc": 0.5 + 0.05 * epoch, key: acc, "penalty": 0.1,
           "seconds": 60.0, "eval_seconds": 6.0}  # fmt: skip
    return row if epochs is None else {**row, "epochs": epochs}


def _result(run, split="test"):
    """A dense results row of ``run``, as a sweep writes it when the run's training ends."""
    return {"run": run, "epochs": 2, "model": "mlp", "width": 32, "dataset": "digits", "dataset_sha256": "abc",
            "split": split, "reg": "none", "weight": 0.0, "seed": 0, "method": "dense", "label": "dense",
            "rate_requested": 0.0, "rate_achieved": 0.0, "accuracy": 0.9, "wall_s": 0.1,
            "train_wall_s": 1.0}  # fmt: skip


def _write(run_dir, rows, *files):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, text in files:
        (run_dir / name).write_text(text)


def test_runs_of_every_shard_in_order_with_how_far_they_got(tmp_path):
    _write(tmp_path / "shard-2-of-2" / "runs" / "b-s0", [_epoch(1), _epoch(2)])
    _write(tmp_path / "shard-1-of-2" / "runs" / "a-s0", [_epoch(e) for e in (1, 2, 3, 4)])
    _write(tmp_path / "shard-1-of-2" / "runs" / "c-s0", [])
    (tmp_path / "shard-1-of-2" / "runs" / "no-metrics").mkdir()
    entries = training_progress(tmp_path)
    assert [(e["run"], e["shard"], e["epochs_done"], e["epochs"], e["finished"]) for e in entries] == [
        ("a-s0", "1/2", 4, 4, True),
        ("c-s0", "1/2", 0, None, False),
        ("b-s0", "2/2", 2, 4, False),
    ]
    assert entries[0]["hours"] == pytest.approx(4 * 66 / 3600)
    assert entries[0]["eval_key"] == "test_acc" and entries[1]["eval_key"] is None


def test_the_planned_epochs_of_older_rows_come_from_the_run_config(tmp_path):
    _write(tmp_path / "runs" / "old", [_epoch(1, epochs=None)], ("config.toml", "epochs = 30\nlr = 0.4\nx = 1\n"))
    _write(tmp_path / "runs" / "done", [_epoch(1, epochs=None)], ("model.safetensors", ""))
    old, done = sorted(training_progress(tmp_path), key=lambda e: e["run"], reverse=True)
    assert (old["epochs"], old["finished"], old["config"]) == (30, False, {"epochs": 30, "lr": 0.4})
    assert (done["epochs"], done["finished"]) == (None, True)  # the final model is written: training ended


@settings(max_examples=30, deadline=None)
@given(accs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12), key=st.sampled_from(["test_acc", "val_acc"]))
def test_the_table_gives_the_last_and_the_best_epoch(tmp_path_factory, accs, key):
    folder = tmp_path_factory.mktemp("sweep")
    rows = [_epoch(i + 1, epochs=12, key=key, acc=a) for i, a in enumerate(accs)]
    _write(folder / "runs" / "r", rows)
    table = progress_table(training_progress(folder))
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # the first epoch of the best accuracy
    cells = table.splitlines()[2].split(" | ")
    assert cells[2] == f"{len(accs)} / 12" + ("" if len(accs) == 12 else " (training)")
    assert cells[3] == f"{100 * accs[-1]:.2f} ({key.removesuffix('_acc')})"
    assert cells[4] == f"{100 * accs[best]:.2f} ({best + 1})"


@settings(max_examples=30, deadline=None)
@given(runs=st.lists(st.lists(st.floats(0.0, 1.0), max_size=6), min_size=1, max_size=3))
def test_the_epoch_table_has_a_row_per_epoch_and_a_column_per_run_still_training(tmp_path_factory, runs):
    folder = tmp_path_factory.mktemp("sweep")
    for i, accs in enumerate(runs):
        _write(folder / "runs" / f"r{i}", [_epoch(e + 1, epochs=6, acc=a) for e, a in enumerate(accs)])
    table = epochs_table(training_progress(folder))
    shown = [(f"r{i}", accs) for i, accs in enumerate(runs) if 0 < len(accs) < 6]  # started, not finished
    if not shown:
        assert table == ""
        return
    head, _, *rows = table.splitlines()
    assert head == "| epoch | " + " | ".join(f"{name} (test)" for name, _ in shown) + " |"
    assert len(rows) == max(len(a) for _, a in shown)
    for epoch, row in enumerate(rows, 1):
        cells = row.strip("| ").split(" | ")
        assert cells[0] == str(epoch)
        assert cells[1:] == [f"{100 * a[epoch - 1]:.2f}" if epoch <= len(a) else "—" for _, a in shown]


def test_the_report_gives_the_epochs_while_a_run_trains_and_not_after(tmp_path):
    _write(tmp_path / "shard-1-of-2" / "runs" / "none-s0", [_epoch(e, epochs=2) for e in (1, 2)])
    _write(tmp_path / "shard-2-of-2" / "runs" / "nuclear-s0", [_epoch(1, epochs=2, acc=0.3, key="val_acc")])
    (tmp_path / "shard-1-of-2" / "results.jsonl").write_text(json.dumps(_result("none-s0")) + "\n")
    text = report.write_report(tmp_path, tmp_path / "report").read_text()
    assert "Accuracy (%) by epoch of the runs still training" in text
    assert "| epoch | nuclear-s0 (shard 2/2, val) |" in text and "| 1 | 30.00 |" in text
    with open(tmp_path / "shard-2-of-2" / "runs" / "nuclear-s0" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(_epoch(2, epochs=2, key="val_acc")) + "\n")
    text = report.write_report(tmp_path, tmp_path / "report").read_text()
    assert "Accuracy (%) by epoch" not in text and "| nuclear-s0 | 2/2 | 2 / 2 |" in text


def test_a_broken_metrics_file_is_named(tmp_path):
    _write(tmp_path / "runs" / "r", [_epoch(1)])
    with open(tmp_path / "runs" / "r" / "metrics.jsonl", "a") as f:
        f.write("not json\n" + json.dumps(_epoch(2)) + "\n")
    with pytest.raises(FileContentError, match="metrics.jsonl"):
        training_progress(tmp_path)


def test_a_sweep_still_training_gets_a_progress_report(tmp_path):
    _write(tmp_path / "shard-1-of-2" / "runs" / "a-s0", [_epoch(1), _epoch(2)], ("config.toml", 'dataset = "d"\n'))
    path = report.write_report(tmp_path, tmp_path / "report")
    text = path.read_text()
    assert "- a-s0: dataset d" in text
    assert "0 of 1 training runs finished" in text and "| a-s0 | 1/2 | 2 / 4 (training) | 60.00 (test) |" in text
    assert (tmp_path / "report" / "training.png").stat().st_size > 0


def test_a_folder_with_neither_results_nor_runs_is_still_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="smoothcompress sweep"):
        report.write_report(tmp_path, tmp_path / "report")


def test_no_plot_before_the_first_epoch(tmp_path):
    _write(tmp_path / "runs" / "r", [])
    assert plot_progress(training_progress(tmp_path), tmp_path / "training.png") is None


def test_the_command_line_reports_a_sweep_still_training(tmp_path, capsys):
    _write(tmp_path / "runs" / "a-s0", [_epoch(1, key="val_acc")])
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "| a-s0 | — | 1 / 4 (training) | 50.00 (val) | 50.00 (1) |" in printed
    assert "training.png" in printed


def test_a_finished_sweep_with_its_runs_gets_both_sections(tmp_path):
    _write(tmp_path / "runs" / "none-s0", [_epoch(e, epochs=2) for e in (1, 2)])
    (tmp_path / "results.jsonl").write_text(json.dumps(_result("none-s0")) + "\n")
    text = report.write_report(tmp_path, tmp_path / "report").read_text()
    assert "## Accuracy (%) after compression" in text and "## Training runs" in text
    assert "| none-s0 | — | 2 / 2 | 60.00 (test) |" in text and "![Training runs](training.png)" in text


def test_a_results_file_given_by_name_reports_no_runs(tmp_path):
    _write(tmp_path / "runs" / "none-s0", [_epoch(1)])
    (tmp_path / "results.jsonl").write_text(json.dumps(_result("none-s0")) + "\n")
    text = report.write_report(tmp_path / "results.jsonl", tmp_path / "report").read_text()
    assert "## Training runs" not in text and not (tmp_path / "report" / "training.png").exists()


def test_a_missing_path_beside_a_sweep_still_training_is_an_error(tmp_path):
    _write(tmp_path / "training" / "runs" / "a-s0", [_epoch(1)])
    with pytest.raises(FileNotFoundError, match="no results file"):  # not a progress report hiding the typo
        report.write_report([tmp_path / "training", tmp_path / "typo" / "results.jsonl"], tmp_path / "report")


def test_a_broken_run_leaves_the_results_report_whole(tmp_path):
    _write(tmp_path / "runs" / "none-s0", [_epoch(1)])
    with open(tmp_path / "runs" / "none-s0" / "metrics.jsonl", "a") as f:
        f.write("not json\n" + json.dumps(_epoch(2)) + "\n")
    (tmp_path / "results.jsonl").write_text(json.dumps(_result("none-s0")) + "\n")
    with pytest.warns(UserWarning, match="metrics.jsonl.*leaves the training runs out"):
        text = report.write_report(tmp_path, tmp_path / "report").read_text()
    assert "## Accuracy (%) after compression" in text and "## Training runs" not in text


def test_epoch_rows_without_a_monitor_are_listed_without_accuracy(tmp_path):
    row = {k: v for k, v in _epoch(1).items() if k != "test_acc"}
    _write(tmp_path / "runs" / "r", [row])
    (entry,) = training_progress(tmp_path)
    assert "| r | — | 1 / 4 (training) | — | — | 55.00 |" in progress_table([entry])
    assert plot_progress([entry], tmp_path / "training.png") is None


def test_a_run_with_results_rows_has_finished_even_in_a_copy_without_its_model(tmp_path):
    _write(tmp_path / "runs" / "none-s0", [_epoch(e, epochs=None) for e in (1, 2)])
    _write(tmp_path / "runs" / "nuclear-s0", [_epoch(1, epochs=None)])
    done, training = with_results(training_progress(tmp_path), [_result("none-s0")])
    assert (done["finished"], done["epochs"]) == (True, 2)
    assert (training["finished"], training["epochs"]) == (False, None)
    (tmp_path / "results.jsonl").write_text(json.dumps(_result("none-s0")) + "\n")
    text = report.write_report(tmp_path, tmp_path / "report").read_text()
    assert "| none-s0 | — | 2 / 2 |" in text and "| nuclear-s0 | — | 1 / ? (training) |" in text

"""Provenance records: commit, device, versions and time, written with the results they describe."""

import json

import pytest

import smoothcompress as sc
from smoothcompress.cli import main
from smoothcompress.files import write_json
from smoothcompress.provenance import COMMIT_ENV, device_name, git_commit, provenance


def test_write_json_round_trips_with_provenance(tmp_path):
    record = {"x": 1.5, **provenance("cpu", seed=3)}
    path = write_json(tmp_path / "r.json", record)
    back = json.loads(path.read_text())
    assert back["x"] == 1.5 and back["seed"] == 3
    assert {"commit", "device", "torch", "time"} <= set(back)
    assert back["smoothcompress"] == sc.__version__


def test_commit_and_device_are_named(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    commit = git_commit()
    assert commit == "unknown" or len(commit.removesuffix("+dirty")) == 40
    assert git_commit(cwd="/") == "unknown"  # not a repository
    assert device_name("cpu").startswith("cpu: ") and device_name().startswith("cpu: ")


def test_a_copied_tree_names_its_commit_through_the_environment(monkeypatch):
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv(COMMIT_ENV, sha + "+dirty")
    assert git_commit(cwd="/") == sha + "+dirty"  # git cannot say here
    assert git_commit() == sha + "+dirty"  # and a copied .git may be stale: the variable wins
    monkeypatch.setenv(COMMIT_ENV, "main")
    with pytest.raises(sc.ConfigError, match="SMOOTHCOMPRESS_COMMIT='main' is not a commit id"):
        git_commit(cwd="/")


def test_a_wrong_commit_variable_is_a_one_line_command_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(COMMIT_ENV, "main")
    assert main(["sweep", "demo", "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothcompress sweep: error: $SMOOTHCOMPRESS_COMMIT='main' is not a commit id")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

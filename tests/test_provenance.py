"""Provenance records: commit, device, versions and time, written with the results they describe."""

import json

import smoothcompress as sc
from smoothcompress.files import write_json
from smoothcompress.provenance import device_name, git_commit, provenance


def test_write_json_round_trips_with_provenance(tmp_path):
    record = {"x": 1.5, **provenance("cpu", seed=3)}
    path = write_json(tmp_path / "r.json", record)
    back = json.loads(path.read_text())
    assert back["x"] == 1.5 and back["seed"] == 3
    assert {"commit", "device", "torch", "time"} <= set(back)
    assert back["smoothcompress"] == sc.__version__


def test_commit_and_device_are_named():
    commit = git_commit()
    assert commit == "unknown" or len(commit.removesuffix("+dirty")) == 40
    assert git_commit(cwd="/") == "unknown"  # not a repository
    assert device_name("cpu").startswith("cpu: ") and device_name().startswith("cpu: ")

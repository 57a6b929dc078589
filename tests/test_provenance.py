"""Crash-safe file writes (atomic_file, write_json, append_jsonl) and provenance records."""

import json
import os

import pytest

from smoothcompress.provenance import append_jsonl, atomic_file, provenance, read_jsonl, write_json


def test_atomic_file_replaces_on_success(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    with atomic_file(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temporary left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_atomic_file_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_file(path) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_append_jsonl_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(path, {"a": 1})
    with open(path, "ab") as f:
        f.write(b'{"a": 2, "b"')  # a killed writer's partial row
    append_jsonl(path, {"a": 3})
    assert read_jsonl(path) == [{"a": 1}, {"a": 3}]
    assert path.read_bytes().endswith(b"\n")


def test_write_json_round_trips_with_provenance(tmp_path):
    record = {"x": 1.5, **provenance("cpu", seed=3)}
    path = write_json(tmp_path / "r.json", record)
    back = json.loads(path.read_text())
    assert back["x"] == 1.5 and back["seed"] == 3
    assert {"commit", "device", "torch", "time"} <= set(back)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Crash-safe files: atomic writes, JSON and JSON-lines rows, file digests, and the output-folder lock."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from smoothcompress.files import (
    LOCK_NAME,
    FolderLock,
    append_jsonl,
    atomic_file,
    file_digest,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
)


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


def test_read_jsonl_ignores_only_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not a JSON line"):
        read_jsonl(path)


def test_write_json_and_write_jsonl_round_trip(tmp_path):
    record = {"x": 1.5, "path": tmp_path}  # a value JSON cannot hold is written as its string
    back = json.loads(write_json(tmp_path / "r.json", record).read_text())
    assert back == {"x": 1.5, "path": str(tmp_path)}
    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    assert read_jsonl(path) == rows
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in rows)
    write_jsonl(path, rows[:1])  # replaces, does not append
    assert read_jsonl(path) == rows[:1]


@pytest.mark.parametrize("size", [0, 5, (1 << 20) + 3])  # empty, small, more than one chunk
def test_file_digest_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_digest(path, "md5") == hashlib.md5(data).hexdigest()
    assert file_digest(path) == sha256_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError):
        file_digest(path, "no-such-hash")


# ---------------------------------------------------------------------------------------------------------
# FolderLock


def test_lock_is_held_then_released(tmp_path):
    with FolderLock(tmp_path, user="sweep") as lock:
        assert lock.path == tmp_path / LOCK_NAME
        assert lock.path.read_text() == f"{os.getpid()}@{socket.gethostname()}"
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_holder_is_refused_with_one_line(tmp_path):
    with FolderLock(tmp_path, user="training run"):
        with pytest.raises(FileExistsError) as info, FolderLock(tmp_path, user="training run"):
            pass
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"another training run ({os.getpid()}@{socket.gethostname()}) is writing to ")
        assert f"delete {tmp_path / LOCK_NAME}" in message
        assert (tmp_path / LOCK_NAME).exists()  # the holder keeps its lock
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(f"{dead.stdout.strip()}@{socket.gethostname()}")
    with FolderLock(tmp_path) as lock:
        assert lock.path.read_text().startswith(f"{os.getpid()}@")
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("owner", ["1@some-other-host", "garbage", ""])
def test_lock_of_another_host_or_unreadable_is_left_alone(tmp_path, owner):
    (tmp_path / LOCK_NAME).write_text(owner)
    with pytest.raises(FileExistsError, match="another process"), FolderLock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).read_text() == owner


def test_lock_is_released_on_error_and_a_folder_it_made_is_removed_if_empty(tmp_path):
    folder = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError, match="boom"), FolderLock(folder):
        assert folder.is_dir()
        raise RuntimeError("boom")
    assert not folder.exists()  # created by the lock, nothing written: removed again
    with FolderLock(folder):
        (folder / "result.txt").write_text("kept")
    assert sorted(p.name for p in folder.iterdir()) == ["result.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

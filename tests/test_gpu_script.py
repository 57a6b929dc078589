"""scripts/gpu_paper.sh, the paper's run on one GPU, works end to end: here on the CPU with a tiny sweep file in
place of the preset (CONFIG), two shards side by side, a time budget that stops them, and a rerun that finishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from imagefolders import image_folder, tar_gz

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_paper.sh"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")), reason="needs bash, timeout")

TINY = """extends = "cifar10-paper"
out = "unused"

[train]
width = 2
epochs = 1
batch_size = 6

[compress]
rates = [0.5]
calibration_images = 6
methods = [{ method = "svd" }, { method = "magnitude+bn" }]
"""


def _run(tmp_path: Path, budget_s: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "DATA": str(tmp_path / "tiny.tar.gz"),
        "CONFIG": str(tmp_path / "tiny.toml"),
        "BUDGET_S": str(budget_s),
        "PYTHON": sys.executable,
        "SMOOTHCOMPRESS_COMMIT": COMMIT,
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)


def test_the_gpu_script_runs_both_shards_stops_at_its_budget_and_resumes(tmp_path):
    tar_gz(image_folder(tmp_path / "tiny", size=16, per_class=4), tmp_path / "tiny.tar.gz")
    (tmp_path / "tiny.toml").write_text(TINY)

    stopped = _run(tmp_path, budget_s=1)  # neither shard gets past importing torch
    assert stopped.returncode == 0, stopped.stderr
    assert "shard 1/2 stopped at the budget" in stopped.stdout and "shard 2/2 stopped at the budget" in stopped.stdout

    done = _run(tmp_path, budget_s=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped at the budget" not in done.stdout
    sweep = tmp_path / "out" / "tiny"
    for shard in (1, 2):
        rows = [json.loads(line) for line in (sweep / f"shard-{shard}-of-2" / "results.jsonl").read_text().splitlines()]
        assert sorted(r["label"] for r in rows) == ["dense", "magnitude+bn", "svd-global-channel"]
        assert {r["commit"] for r in rows} == {COMMIT} and {r["train_commit"] for r in rows} == {COMMIT}
        assert {r["shard"] for r in rows} == {shard}
        assert (tmp_path / "out" / f"tiny-shard-{shard}.log").is_file()
    assert (sweep / "report" / "report.md").is_file()


def test_a_shard_that_fails_fails_the_script_and_says_where_its_log_is(tmp_path):
    (tmp_path / "tiny.tar.gz").write_bytes(b"not an archive")
    (tmp_path / "tiny.toml").write_text(TINY)
    failed = _run(tmp_path, budget_s=240)
    assert failed.returncode == 1
    assert "shard 1/2 failed (exit code" in failed.stdout and "tiny-shard-1.log" in failed.stdout

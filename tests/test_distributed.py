"""DDP under torchrun: 2 gloo processes train like 1 process with the same global batch; only rank 0 writes."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import smoothcompress as sc
from smoothcompress.study.training import TrainConfig, run


def torchrun(tmp_path, config: TrainConfig, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m smoothcompress train --config FILE``."""
    cfg_path = config.to_toml(tmp_path / f"{nproc}.toml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "smoothcompress", "train", "--config", str(cfg_path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def test_two_gloo_processes_match_one_process(tmp_path):
    # An MLP (no BatchNorm) with a penalty: with the global-batch semantics, 2 processes x 64 images per step
    # follow the 1-process run with 128 images per step, up to floating-point summation order.
    config = TrainConfig(
        dataset="digits", model="mlp", width=16, epochs=2, batch_size=128, lr=0.2, device="cpu", reg="first"
    )
    config = dataclasses.replace(config, weight=0.01)
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    proc = torchrun(tmp_path, dataclasses.replace(config, out=str(ddp_out)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = run(dataclasses.replace(config, out=str(single_out)))

    assert sorted(p.name for p in ddp_out.iterdir()) == sorted(p.name for p in single_out.iterdir())
    rows = [json.loads(line) for line in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # one line per epoch: only rank 0 wrote
    for got, want in zip(rows, single.history, strict=True):
        for key in ("loss", "train_acc", "test_acc", "penalty", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key

    ddp_weights = sc.load(ddp_out / "model.safetensors").state_dict()
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-4, atol=1e-5)


def test_global_batch_must_split_evenly(monkeypatch):
    # Checked before joining the process group, so this rank fails fast instead of waiting for its peers.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    dataset = sc.load_dataset("digits")
    with pytest.raises(ValueError, match="batch_size=63 is the global batch and must be divisible by the 2 processes"):
        sc.train(sc.create_model("mlp", width=8), dataset, TrainConfig(batch_size=63, device="cpu"))

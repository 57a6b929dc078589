"""Checkpoints: a run SIGKILLed mid-epoch and resumed ends with exactly the uninterrupted run's weights (CPU)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import smoothcompress as sc
from smoothcompress.io import CheckpointError
from smoothcompress.study.data import load_dataset
from smoothcompress.study.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, run, train

EPOCHS, BATCH = 2, 128
CONFIG = dict(dataset="digits", model="mlp", width=16, epochs=EPOCHS, batch_size=BATCH, lr=0.2, device="cpu")

# Trains like run(config) does, but SIGKILLs itself at the given training forward call: a real kill at a
# reproducible point, mid-epoch, after the previous epoch's checkpoint was written.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import smoothcompress as sc
    from smoothcompress.study.data import load_dataset
    from smoothcompress.study.training import TrainConfig, seed_everything, train

    config = TrainConfig.from_toml(sys.argv[1])
    kill_at = int(sys.argv[2])
    dataset = load_dataset(config.dataset)
    seed_everything(config.seed)
    model = sc.create_model(config.model, num_classes=dataset.num_classes, width=config.width)
    calls = 0

    def kill_mid_epoch(module, args):
        global calls
        calls += module.training
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(kill_mid_epoch)
    train(model, dataset, config, out_dir=config.out)
    """
)


def weights(path):
    return sc.load(path).state_dict()


# The lagged nuclear gradient (refresh=7, not a divisor of the ~11 steps of an epoch) checks that the stored polar
# factors travel in the checkpoint: recomputing them on resume would change the run.
@pytest.mark.parametrize("penalty", [{}, {"reg": "nuclear", "weight": 1e-2, "reg_refresh": 7}], ids=["plain", "lagged"])
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path, penalty):
    steps = len(load_dataset("digits").y_train) // BATCH
    config = {**CONFIG, **penalty}
    killed = TrainConfig(**config, out=str(tmp_path / "killed"))
    cfg_path = killed.to_toml(tmp_path / "killed.toml")
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg_path), str(steps + steps // 2)], stderr=subprocess.PIPE, text=True
    )
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)["epoch"] == 1
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    assert (tmp_path / "killed" / ".lock").read_text().startswith(f"{proc.pid}@")  # the killed run's lock is left

    resumed = run(TrainConfig(**config, out=str(tmp_path / "killed"), resume=True))  # and taken over
    assert not (tmp_path / "killed" / ".lock").exists()
    straight = run(TrainConfig(**config, out=str(tmp_path / "straight")))

    assert resumed.resumed_from == 1 and straight.resumed_from is None
    a, b = weights(tmp_path / "killed" / "model.safetensors"), weights(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS
    for key in ("epoch", "loss", "train_acc", "test_acc", "lr"):
        assert [r[key] for r in resumed.history] == [r[key] for r in straight.history]


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    cfg = TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path))
    first = run(cfg)
    again = run(TrainConfig(**{**cfg.to_dict(), "resume": True}))
    assert again.resumed_from == 1 and again.history == first.history
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_existing_checkpoint_needs_resume(tmp_path):
    cfg = TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path))
    run(cfg)
    with pytest.raises(ValueError, match="already exists: pass resume=True"):
        run(cfg)


def test_resume_with_changed_settings_names_them(tmp_path):
    run(TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path)))
    with pytest.raises(ValueError, match=r"different settings \(epochs: 1 -> 2; lr: 0.2 -> 0.3\)"):
        run(TrainConfig(**{**CONFIG, "lr": 0.3}, out=str(tmp_path), resume=True))


def test_checkpoint_with_an_unknown_key_is_refused(tmp_path):
    # `lam`, an old name of `weight`, is no longer read: the stored config fails with the unknown-key error.
    cfg = TrainConfig(**{**CONFIG, "epochs": 1, "reg": "first", "weight": 0.01}, out=str(tmp_path))
    run(cfg)
    path = tmp_path / CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    state["config"]["lam"] = state["config"].pop("weight")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) lam; valid keys are: "):
        run(TrainConfig(**{**cfg.to_dict(), "resume": True}))


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    result = run(TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path), resume=True))
    assert result.resumed_from is None and len(result.history) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    cfg = TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path))
    run(cfg)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable.*Delete it"):
        run(TrainConfig(**{**cfg.to_dict(), "resume": True}))


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    run(TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path)))
    dataset = load_dataset("digits")
    other = sc.create_model("mlp", width=8)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(other, dataset, TrainConfig(**{**CONFIG, "epochs": 1}, resume=True), out_dir=tmp_path)


def test_checkpoint_loads_without_pickle_code(tmp_path):
    # weights_only=True refuses arbitrary objects: a checkpoint smuggling one is rejected, not executed.
    run(TrainConfig(**{**CONFIG, "epochs": 1}, out=str(tmp_path)))
    path, marker = tmp_path / CHECKPOINT_NAME, tmp_path / "pwned"
    state = torch.load(path, weights_only=True)
    state["history"].append(MakeDir(marker))
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(path)
    assert not marker.exists()


class MakeDir:
    """Unpickling this object creates a directory: the stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    from smoothcompress.study.training import rng_state, seed_everything, set_rng_state

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random(), random.gauss()

    seed_everything(3)
    np.random.randn()  # leaves a cached Gaussian in both generators
    random.gauss()
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    first = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert draws() == first


def test_settings_added_since_a_checkpoint_count_as_their_defaults():
    from smoothcompress.study.training import check_same_settings

    config = TrainConfig(**CONFIG, reg="nuclear", weight=1e-3)
    older = {k: v for k, v in config.to_dict().items() if k not in ("reg_refresh", "reg_axes", "reg_scale_free")}
    check_same_settings(older, config, "run/checkpoint.pt")  # trained the default way: the same settings
    with pytest.raises(ValueError, match=r"reg_refresh: 1 -> 10"):
        check_same_settings(older, TrainConfig(**CONFIG, reg="nuclear", weight=1e-3, reg_refresh=10), "run/c.pt")


def test_the_command_line_resumes_a_run_with_its_own_config(tmp_path, capsys):
    from smoothcompress.cli import main

    run(TrainConfig(**{**CONFIG, "epochs": 1, "width": 8}, out=str(tmp_path)))
    resumed = TrainConfig.from_sources(out=str(tmp_path), resume=True, lr=None)
    assert (resumed.dataset, resumed.width, resumed.resume) == ("digits", 8, True)
    assert TrainConfig.from_sources(out=str(tmp_path)).dataset == TrainConfig().dataset  # no resume: the defaults
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 0  # digits, width 8: from config.toml
    assert "after 1 epochs" in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path), "--resume", "--width", "16"]) == 2  # a flag still overrides
    assert "different settings (width: 8 -> 16)" in capsys.readouterr().err

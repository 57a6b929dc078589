"""The trainer: schedules, optimiser, penalty warm-up, metrics, output files, evaluation, divergence."""

import json
import math
import os
import re
import socket

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.cli import main
from smoothcompress.study.data import Loader, load_dataset
from smoothcompress.study.training import (
    CHECKPOINT_NAME,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    penalty_ramp,
    run,
    train,
)

FAST = dict(dataset="digits", model="mlp", width=32, epochs=2, batch_size=128, lr=0.2, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return sc.create_model("mlp", width=FAST["width"])


@pytest.fixture(scope="module")
def trained(digits):
    """One training run with the FAST settings, shared by the tests that only read it."""
    return train(tiny_mlp(), digits, TrainConfig(**FAST))


# ---------------------------------------------------------------------------------------------------------
# Schedules and optimiser


def test_lr_factor_values():
    one = [lr_factor(s, 10, "onecycle", 0.2) for s in range(10)]
    assert one[:3] == [0.5, 1.0, 1.0]
    assert one[-1] == pytest.approx(1 / 8)
    cos = [lr_factor(s, 10, "cosine", 0.2) for s in range(10)]
    assert cos[:3] == [0.5, 1.0, 1.0]
    assert cos[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(0, 10, "cosine", 0.0) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(5, 10, "step", 0.2)


@settings(max_examples=30, deadline=None)
@given(total=st.integers(1, 2000), warmup=st.floats(0.0, 0.9), schedule=st.sampled_from(["onecycle", "cosine"]))
def test_lr_factor_rises_then_falls(total, warmup, schedule):
    f = [lr_factor(s, total, schedule, warmup) for s in range(total)]
    assert all(0 < v <= 1 for v in f)
    peak = f.index(max(f))
    assert max(f) == 1.0
    assert all(a <= b for a, b in zip(f[: peak + 1], f[1 : peak + 1], strict=False))
    assert all(a >= b for a, b in zip(f[peak:], f[peak + 1 :], strict=False))


def test_penalty_ramp_is_linear_over_the_warmup_epochs():
    assert [penalty_ramp(s, 4, 2) for s in range(10)] == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1, 1, 1]
    assert penalty_ramp(0, 4, 0) == 1.0


def test_a_delayed_penalty_is_off_then_ramps():
    assert [penalty_ramp(s, 4, 1, delay_epochs=1.5) for s in range(12)] == [0] * 6 + [0.25, 0.5, 0.75, 1, 1, 1]
    assert [penalty_ramp(s, 4, 0, delay_epochs=1) for s in range(6)] == [0, 0, 0, 0, 1, 1]


def test_optimizer_is_nesterov_sgd_with_weight_decay_on_weights_only():
    model = sc.create_model("cnn", width=4)
    opt = make_optimizer(model, TrainConfig(weight_decay=1e-3, momentum=0.8, lr=0.3))
    assert isinstance(opt, torch.optim.SGD)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 1e-3 for p in g["params"]}
    for p in model.parameters():
        assert (id(p) in decayed) == (p.ndim >= 2)
    assert all(g["nesterov"] and g["momentum"] == 0.8 and g["lr"] == 0.3 for g in opt.param_groups)


# ---------------------------------------------------------------------------------------------------------
# Training


def test_train_learns_digits_and_reports_every_epoch(trained):
    result = trained
    assert [row["epoch"] for row in result.history] == [1, 2]
    keys = {"epoch", "loss", "train_acc", "test_acc", "penalty", "reg_weight", "lr", "images_per_s", "seconds"}
    assert keys <= set(result.history[0])
    assert result.test_acc == result.history[-1]["test_acc"] > 0.8
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.val_acc is None and result.out_dir is None
    assert result.config.device == "cpu" and result.config.bf16 is False and result.config.channels_last is True


def test_same_seed_same_weights(digits, trained):
    a = trained.model.state_dict()
    b = train(tiny_mlp(), digits, TrainConfig(**FAST)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class Custom(nn.Module):
    """A user module that is not in the registry (no sc_arch), with BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.head(x.flatten(1))


def test_any_module_trains_with_a_penalty(digits):
    torch.manual_seed(0)
    cfg = TrainConfig(**{**FAST, "reg": "first", "weight": 0.05})
    result = train(Custom(), digits, cfg)
    assert result.test_acc > 0.75
    assert all(row["penalty"] > 0 and row["reg_weight"] == 0.05 for row in result.history)


def test_metrics_penalty_is_the_penalty_even_in_epochs_the_schedule_skips(digits):
    # 2 steps per epoch and the nuclear default of a penalty every 10th step: it enters the loss in epoch 1 only
    cfg = TrainConfig(**{**FAST, "epochs": 3, "batch_size": 512, "reg": "nuclear", "weight": 0.01})
    result = train(tiny_mlp(), digits, cfg)
    nuclear = sc.Smoothness("nuclear", 0.01)
    with torch.no_grad():
        at_start, at_end = (float(0.01 * nuclear.unweighted(m)) for m in (tiny_mlp(), result.model))
    assert result.history[0]["penalty"] == pytest.approx(at_start, rel=1e-5)  # the step that held it, scale 10 out
    assert result.history[-1]["penalty"] == pytest.approx(at_end, rel=1e-5)  # none held it: its value at the end
    assert all(row["penalty"] > 0 for row in result.history)


def test_metrics_penalty_of_the_proximal_nuclear_norm(digits):
    cfg = TrainConfig(**{**FAST, "epochs": 1, "reg": "nuclear", "weight": 0.01, "reg_proximal": True})
    result = train(tiny_mlp(), digits, cfg)
    with torch.no_grad():
        value = float(0.01 * sc.Smoothness("nuclear", 0.01).unweighted(result.model))
    assert result.history[0]["penalty"] == pytest.approx(value, rel=1e-5) and value > 0


def test_validation_split_replaces_the_test_set_during_training(digits):
    result = train(tiny_mlp(), digits, TrainConfig(**FAST, val_fraction=0.2))
    assert "val_acc" in result.history[0] and "test_acc" not in result.history[0]
    assert result.val_acc == result.history[-1]["val_acc"]
    assert result.test_acc == evaluate(result.model, digits)


def test_reported_loss_is_the_label_smoothed_data_loss(digits):
    # Full batch, one step, a model whose logits are a fixed bias: the epoch's loss is known in closed form.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.linspace(-1, 1, 10))
    n = len(digits.y_train)
    for eps in (0.0, 0.3):
        expected = F.cross_entropy(model[1].bias.detach().expand(n, 10), digits.y_train, label_smoothing=eps)
        cfg = TrainConfig(**{**FAST, "epochs": 1, "batch_size": n, "label_smoothing": eps, "lr": 1e-9})
        row = train(model, digits, cfg).history[0]
        assert row["loss"] == pytest.approx(float(expected), rel=1e-5)


class Recorder:
    """A stand-in penalty that records the weight it is called with and the lr after each step."""

    def __init__(self, weight):
        self.weight, self.weights, self.lrs = weight, [], []

    def __call__(self, model):
        self.weights.append(self.weight)
        return torch.zeros(())

    def after_step(self, model, lr):
        self.lrs.append(lr)


def test_penalty_weight_warms_up_and_after_step_gets_the_step_lr(digits):
    cfg = TrainConfig(**{**FAST, "reg_warmup_epochs": 1.5, "schedule": "cosine", "warmup": 0.1})
    rec = Recorder(0.5)
    train(tiny_mlp(), digits, cfg, regularizer=rec)
    steps = len(digits.y_train) // cfg.batch_size
    total = 2 * steps
    assert len(rec.weights) == len(rec.lrs) == total
    assert rec.weights == [0.5 * penalty_ramp(s, steps, 1.5) for s in range(total)]
    assert rec.weights[0] == pytest.approx(0.5 / (1.5 * steps)) and rec.weights[-1] == 0.5
    assert rec.weights.index(0.5) == math.ceil(1.5 * steps) - 1
    assert rec.lrs == pytest.approx([cfg.lr * lr_factor(s, total, "cosine", 0.1) for s in range(total)], rel=1e-12)


def test_progress_bar_is_quiet_without_a_terminal(digits, capfd):
    train(tiny_mlp(), digits, TrainConfig(**{**FAST, "epochs": 1}))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_batch_larger_than_the_data_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="smaller than one batch"):
        train(tiny_mlp(), digits, TrainConfig(**{**FAST, "batch_size": 10_000}))


def test_gpu_speed_settings_also_run_on_cpu(digits):
    # bf16 autocast and channels_last (the CUDA defaults) exercised on the CPU with a conv net.
    torch.manual_seed(0)
    cfg = TrainConfig(**{**FAST, "epochs": 1, "bf16": True, "channels_last": True})
    result = train(sc.create_model("cnn", width=4), digits, cfg)
    assert result.config.bf16 and result.config.channels_last
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert all(p.is_contiguous() for p in result.model.parameters())  # back to the default layout for saving


@pytest.mark.slow
def test_compiled_training_matches_eager(digits):
    eager = train(tiny_mlp(), digits, TrainConfig(**FAST)).model.state_dict()
    compiled = train(tiny_mlp(), digits, TrainConfig(**FAST, compile=True)).model.state_dict()
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Run folder


def test_run_writes_metrics_config_model_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(**FAST, reg="second", weight=0.01, out=str(out))
    result = run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.history and [(r["epoch"], r["epochs"]) for r in rows] == [(1, 2), (2, 2)]
    assert sc.TrainConfig.from_toml(out / "config.toml") == result.config
    assert result.config == TrainConfig(**{**cfg.to_dict(), "bf16": False, "channels_last": True})
    loaded = sc.load(out / "model.safetensors")
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), result.model.eval()(x))
    state = load_checkpoint(out / CHECKPOINT_NAME)
    assert state["epoch"] == 2 and state["history"] == rows
    assert state["regularizer"]["step"] == 2 * (len(load_dataset("digits").y_train) // FAST["batch_size"])


def test_run_adapts_the_model_to_the_data(tmp_path):
    # cnn defaults to 1 channel, mlp to 64 inputs: a 3-channel 8x8 ImageFolder-like set needs in_channels=3.
    from smoothcompress.study.training.loop import _model_kwargs

    assert _model_kwargs(TrainConfig(model="cnn", width=4), (3, 8, 8)) == {"width": 4, "in_channels": 3}
    assert _model_kwargs(TrainConfig(model="mlp"), (3, 32, 32)) == {"in_features": 3072}
    assert _model_kwargs(TrainConfig(model="resnet18"), (3, 32, 32)) == {}


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def test_evaluate_constant_predictor_matches_class_frequency(digits):
    class Always(nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k, self.dummy = k, nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return F.one_hot(torch.full((x.shape[0],), self.k), 10).float() + 0 * self.dummy

    for k in (0, 7):
        expected = float((digits.y_test == k).double().mean())
        assert evaluate(Always(k), digits) == pytest.approx(expected, abs=1e-12)


def test_evaluate_dataset_and_loader_agree_and_restore_mode(digits, trained):
    model = trained.model.train()
    loader = Loader(digits.x_test, digits.y_test, 50, train=False, mean=digits.mean, std=digits.std)
    acc = evaluate(model, digits, batch_size=64)
    assert acc == evaluate(model, loader)
    assert model.training
    assert 0.5 < acc <= 1


# ---------------------------------------------------------------------------------------------------------
# Divergence


@pytest.mark.parametrize(
    "overrides, causes",
    [
        ({"lr": 1e8}, r"Likely cause: the learning rate is too high \(lr=1e\+08"),
        ({"reg": "first", "weight": 1e12}, "penalty weight is too large.*learning rate is too high"),
    ],
)
def test_divergence_stops_with_a_clear_message(digits, overrides, causes):
    with pytest.raises(TrainingDiverged, match=causes) as e:
        train(tiny_mlp(), digits, TrainConfig(**{**FAST, **overrides}))
    assert ("penalty" in str(e.value)) == ("reg" in overrides)


class NaNAfter(nn.Module):
    """Wraps a model and returns NaN logits from the given training forward call on."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_divergence_keeps_the_last_good_checkpoint(digits, tmp_path):
    steps = len(digits.y_train) // FAST["batch_size"]
    model = NaNAfter(tiny_mlp(), after=steps + 3)  # breaks in epoch 2
    with pytest.raises(TrainingDiverged, match=r"epoch 2.*last good checkpoint \(epoch 1\)"):
        train(model, digits, TrainConfig(**{**FAST, "epochs": 3}), out_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# One run per folder


def test_a_second_run_into_the_same_folder_is_refused(digits, tmp_path):
    # A second run into the folder, started while the first one trains (from inside its first step), fails.
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    model, other, refusals = tiny_mlp(), tiny_mlp(1), []

    def second_run(module, args):
        if module.training and not refusals:
            with pytest.raises(FileExistsError) as info:
                train(other, digits, cfg, out_dir=tmp_path)
            refusals.append(str(info.value))

    model.register_forward_pre_hook(second_run)
    result = train(model, digits, cfg, out_dir=tmp_path)
    (message,) = refusals
    assert "\n" not in message
    assert re.match(rf"another training run \({os.getpid()}@.+\) is writing to {re.escape(str(tmp_path))}", message)
    assert len(result.history) == 1 and (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / ".lock").exists()  # released at the end


def _cli_train(*flags: str) -> list[str]:
    return ["train", "--dataset", "digits", "--model", "mlp", "--width", "16", "--epochs", "1", "--batch-size",
            "128", "--device", "cpu", *flags]  # fmt: skip


def test_cli_train_into_a_folder_in_use_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / ".lock").write_text(f"{os.getpid()}@{socket.gethostname()}")  # a live owner: this very process
    assert main(_cli_train("--out", str(tmp_path))) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothcompress train: error: another training run (") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written, the owner's lock kept


def test_cli_lam_is_refused(tmp_path, capsys):
    """``lam``, an old name of ``weight``, is neither a flag nor a config key."""
    assert main(_cli_train("--reg", "first", "--lam", "0.01")) == 2
    assert "error: unrecognized arguments: --lam 0.01" in capsys.readouterr().err
    config = tmp_path / "old.toml"
    config.write_text('reg = "first"\nlam = 0.01\n')
    assert main(_cli_train("--config", str(config), "--out", str(tmp_path / "r"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothcompress train: error: unknown config key(s) lam; valid keys are: ")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()

"""TrainConfig: defaults, TOML round-trips, merging file and flags, and clear errors for bad input."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothcompress.study.training import TrainConfig


def test_defaults_are_the_paper_setting():
    c = TrainConfig()
    assert (c.dataset, c.model, c.reg, c.weight, c.schedule) == ("cifar10", "resnet18", "none", 0.0, "onecycle")
    assert c.momentum > 0 and c.resume is False


def test_every_field_has_a_why_comment():
    source = Path(inspect.getsourcefile(TrainConfig)).read_text()
    body = source.split("class TrainConfig")[1].split("def __post_init__")[0]
    for f in dataclasses.fields(TrainConfig):
        line = next(ln for ln in body.splitlines() if ln.strip().startswith(f"{f.name}:"))
        assert "#" in line, f"field {f.name} has no comment"


def test_toml_round_trip(tmp_path):
    c = TrainConfig(
        dataset="digits", model="mlp", width=8, reg="second", weight=1e-3, reg_axes=("out", "kh"), bf16=True
    )
    path = c.to_toml(tmp_path / "c.toml")
    assert TrainConfig.from_toml(path) == c
    assert "bf16 = true" in path.read_text()
    assert "channels_last" not in path.read_text()  # None ("automatic") is omitted: TOML has no null


def test_flags_override_the_file_and_none_means_not_given(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('dataset = "digits"\nepochs = 7\nlr = 0.05\nreg = "first"\nweight = 0.01\n')
    c = TrainConfig.from_sources(path, epochs=2, lr=None, seed=3)
    assert (c.dataset, c.epochs, c.lr, c.seed, c.reg) == ("digits", 2, 0.05, 3, "first")
    assert TrainConfig.from_sources(epochs=2) == TrainConfig(epochs=2)


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config key.*epoch_count.*lrate"):
        TrainConfig.from_dict({"epoch_count": 3, "lrate": 0.1, "seed": 1})
    path = tmp_path / "c.toml"
    path.write_text("learning_rate = 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_toml(path)
    with pytest.raises(ValueError, match="batchsize"):
        TrainConfig.from_sources(None, batchsize=3)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("epochs", "3", "epochs.*must be an integer"),
        ("epochs", 2.5, "epochs"),
        ("lr", "fast", "lr.*must be a number"),
        ("bf16", 1, "bf16.*must be true or false"),
        ("reg_axes", "out", "reg_axes.*list of strings"),
        ("schedule", "step", "schedule must be one of onecycle, cosine"),
        ("reg", "l1", "reg must be one of none, nuclear, first, second"),
        ("device", "gpu", "device must be one of cpu, cuda, auto"),
        ("epochs", 0, "epochs must be >= 1"),
        ("lr", -0.1, "lr must be"),
        ("lr", float("nan"), "lr must be"),
        ("warmup", 1.0, "warmup"),
        ("val_fraction", 1.0, "val_fraction"),
        ("label_smoothing", 1.5, "label_smoothing"),
    ],
)
def test_bad_values_raise_value_error(key, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({key: value})


def test_weight_without_a_penalty_is_an_error():
    with pytest.raises(ValueError, match="no effect with reg='none'"):
        TrainConfig(weight=0.1)


def test_ints_become_floats_and_lists_tuples():
    c = TrainConfig.from_dict({"lr": 1, "reg_axes": ["in"]})
    assert isinstance(c.lr, float) and c.reg_axes == ("in",)


def test_bad_toml_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        TrainConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        TrainConfig.from_toml(bad)


@settings(max_examples=30, deadline=None)
@given(
    epochs=st.integers(1, 500),
    lr=st.floats(1e-6, 10.0),
    reg=st.sampled_from(["nuclear", "first", "second"]),
    weight=st.floats(0.0, 1.0),
    axes=st.lists(st.sampled_from(["out", "in", "kh", "kw"]), min_size=1, max_size=4, unique=True),
    width=st.one_of(st.none(), st.integers(1, 512)),
    augment=st.one_of(st.none(), st.booleans()),
)
def test_round_trip_property(tmp_path_factory, epochs, lr, reg, weight, axes, width, augment):
    c = TrainConfig(epochs=epochs, lr=lr, reg=reg, weight=weight, reg_axes=tuple(axes), width=width, augment=augment)
    path = c.to_toml(tmp_path_factory.mktemp("cfg") / "c.toml")
    assert TrainConfig.from_toml(path) == c
    assert TrainConfig.from_dict(c.to_dict()) == c


# ---------------------------------------------------------------------------------------------------------
# `lam`, an old name of `weight`, is no longer read


def test_lam_is_refused(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'lam'"):
        TrainConfig(reg="first", lam=0.01)
    with pytest.raises(ValueError, match=r"^unknown config key\(s\) lam; valid keys are: "):
        TrainConfig.from_dict({"reg": "first", "lam": 0.01})
    path = tmp_path / "old.toml"
    path.write_text('reg = "first"\nlam = 0.01\n')
    with pytest.raises(ValueError, match=r"^unknown config key\(s\) lam;"):
        TrainConfig.from_toml(path)
    with pytest.raises(ValueError, match=r"^unknown config key\(s\) lam;"):
        TrainConfig.from_sources(path, weight=0.02)
    assert not hasattr(TrainConfig(), "lam")


def test_weight_needs_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = TrainConfig.from_dict({"reg": "nuclear", "weight": 3e-4})
        assert TrainConfig.from_dict(c.to_dict()) == c
        assert dataclasses.replace(c, weight=1e-3).weight == 1e-3

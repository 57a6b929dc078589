"""evaluate refuses a model and data that do not fit (classes, channels, input shape): library and command line."""

import pytest
import torch
from imagefolders import image_folder
from torch import nn

import smoothcompress as sc
from smoothcompress.cli import main
from smoothcompress.study.data import ROOT_ENV, Loader
from smoothcompress.study.training import evaluate


@pytest.fixture(scope="module")
def digits():
    return sc.load_dataset("digits")


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "cache"))  # the ImageFolder cache
    return image_folder(tmp_path / "tiny")


@pytest.fixture
def tiny(tiny_folder):
    return sc.load_dataset(str(tiny_folder))


def cnn(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return sc.create_model("cnn", width=4, **kwargs).eval()


def test_more_outputs_than_classes_is_refused(tiny):
    with pytest.raises(ValueError, match=r"^the model outputs 10 classes but dataset imagefolder:tiny has 3; "):
        evaluate(cnn(num_classes=10, in_channels=3), tiny)


def test_fewer_outputs_than_classes_is_refused(digits):
    with pytest.raises(ValueError, match="the model outputs 3 classes but dataset digits has 10"):
        evaluate(cnn(num_classes=3), digits)


def test_other_channels_than_registered_are_refused(tiny):
    with pytest.raises(ValueError, match=r"takes 1-channel images \(1x8x8, as registered\) but imagefolder:tiny"):
        evaluate(cnn(num_classes=3), tiny)


def test_an_input_the_model_cannot_take_is_one_line(tiny):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # takes 1x8x8 images; not a registry model
    with pytest.raises(ValueError, match=r"^the model cannot take the 3x8x8 inputs of imagefolder:tiny \(") as e:
        evaluate(model, tiny)
    assert "\n" not in str(e.value)


def test_outputs_that_are_not_logits_are_refused(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Unflatten(1, (10, 1)))
    with pytest.raises(ValueError, match=r"to shape \(1, 10, 1\), not \(batch, classes\) logits"):
        evaluate(model, digits)


def test_other_image_sizes_are_fine_for_a_model_that_takes_them(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "cache"))
    larger = sc.load_dataset(str(image_folder(tmp_path / "larger", size=12)))
    assert 0.0 <= evaluate(cnn(num_classes=3, in_channels=3), larger) <= 1.0  # registered 8x8, pools any size


def test_batches_with_labels_beyond_the_outputs_are_refused(digits):
    loader = Loader(digits.x_test, digits.y_test, 64, train=False, mean=digits.mean, std=digits.std)
    with pytest.raises(ValueError, match="the model outputs 5 classes but the batches have label 9"):
        evaluate(cnn(num_classes=5), loader)
    assert 0.0 <= evaluate(cnn(), loader) <= 1.0
    with pytest.raises(ValueError, match="got no samples"):
        evaluate(cnn(), [])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 10, "in_channels": 3}, "the model outputs 10 classes but dataset imagefolder:tiny has 3"),
        ({"num_classes": 10}, "takes 1-channel images (1x8x8, as registered) but imagefolder:tiny has 3x8x8"),
    ],
)
def test_the_command_line_prints_one_line_and_fails(tiny_folder, tmp_path, capsys, kwargs, message):
    path = sc.save(cnn(**kwargs), tmp_path / "model.safetensors")
    assert main(["evaluate", str(path), "--data", str(tiny_folder), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "accuracy" not in captured.out

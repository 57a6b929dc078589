"""Every registered model is tested for free: build, forward shape, width scaling, arch record."""

import json

import pytest
import torch

import smoothcompress as sc
from smoothcompress.models import ARCH_ATTR, model_input_shape

MODELS = sc.list_models()


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape(name):
    torch.manual_seed(0)
    model = sc.create_model(name, num_classes=7).eval()
    x = torch.randn(2, *model_input_shape(name))
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_arch_is_recorded_and_json(name):
    """The recorded arch survives JSON (as in a checkpoint) and rebuilds the same model."""
    model = sc.create_model(name, num_classes=3, width=4)
    arch = getattr(model, ARCH_ATTR)
    assert arch == {"name": name, "kwargs": {"num_classes": 3, "width": 4}}
    again = json.loads(json.dumps(arch))
    assert again == arch
    rebuilt = sc.create_model(again["name"], **again["kwargs"])
    assert getattr(rebuilt, ARCH_ATTR) == arch
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("name", MODELS)
def test_width_scales_params(name):
    default = sc.create_model(name)
    small = sc.create_model(name, width=4)
    assert sc.count_params(small) < sc.count_params(default)


def test_resnet18_is_the_paper_model():
    model = sc.create_model("resnet18", num_classes=10)
    assert sc.count_params(model) == 11_173_962
    assert isinstance(model.conv1, torch.nn.Conv2d) and model.conv1.kernel_size == (3, 3)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_resnet20_and_56_depths():
    convs = lambda m: sum(  # noqa: E731
        isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules()
    )
    assert convs(sc.create_model("resnet20")) == 19
    assert convs(sc.create_model("resnet56")) == 55


def test_unknown_model_and_bad_classes():
    with pytest.raises(ValueError, match="unknown model 'nope'.*resnet18"):
        sc.create_model("nope")
    with pytest.raises(ValueError, match="num_classes"):
        sc.create_model("mlp", num_classes=0)


def test_register_duplicate_rejected():
    def resnet18(num_classes=10):
        return torch.nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        sc.register_model(resnet18)

"""Model registry: ``create_model(name, num_classes=..., **kw)`` builds any registered architecture.

Every model built through the registry remembers how it was built (``model.sc_arch``), which is what lets
:func:`smoothcompress.load` rebuild a saved model without pickle. Register a new architecture with
``@register_model`` and it is picked up by the tests that are parametrized over :func:`list_models`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable

import torch
from torch import nn

from smoothcompress.errors import ConfigError

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "model_input_shape",
    "model_options",
    "default_input_shape",
    "import_factory",
    "ARCH_ATTR",
    "INPUT_ATTR",
]

ARCH_ATTR = "sc_arch"
"""Name of the attribute in which a registry-built model records ``{"name": ..., "kwargs": ...}``."""

INPUT_ATTR = "sc_input"
"""Name of the attribute in which a trained model records what it takes: ``{"shape": [C, H, W], "dtype":
"float32", "mean": [...], "std": [...], "num_classes": K, "dataset": NAME}`` (set by the trainer, saved with the
weights; see :func:`smoothcompress.inputs.record_input`)."""

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, input_shape=(3, 32, 32)):
    """Register a model factory under its function name.

    Parameters
    ----------
    fn : callable
        ``fn(num_classes: int, **kw) -> nn.Module``.
    input_shape : tuple of int
        Default (C, H, W) of one input sample, used by tests and the CLI for FLOP counts.
    """

    def wrap(f):
        if f.__name__ in _REGISTRY:
            raise ValueError(f"model {f.__name__!r} is already registered")
        _REGISTRY[f.__name__] = f
        _INPUT_SHAPES[f.__name__] = tuple(input_shape)
        return f

    return wrap(fn) if fn is not None else wrap


def import_factory(spec: str) -> Callable[[], nn.Module]:
    """The model factory named ``"module:function"`` (e.g. ``"mypkg.nets:build"``), imported, not yet called.

    The module is imported as Python would import it from the current folder (which is put on ``sys.path`` for
    the import if it is not there). Calling the factory with no arguments must return the architecture of a
    saved model, for ``smoothcompress.load(path, model=factory())``.

    Raises
    ------
    ConfigError
        ``spec`` is not ``module:function``, the module cannot be found, it has no such attribute, or the
        attribute is not callable. Errors raised while the module itself runs propagate unchanged.
    """
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), attr)):
        raise ConfigError(f"a model factory is MODULE:FUNCTION, e.g. mypkg.nets:build; got {spec!r}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise  # the factory's module itself imports something missing: its own error
        raise ConfigError(
            f"model factory {spec!r}: no module {module_name!r} on the Python path (run from its folder or install it)"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"model factory {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(factory):
        raise ConfigError(f"model factory {spec!r}: {attr!r} is a {type(factory).__name__}, not a function")
    return factory


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> tuple[str, ...]:
    """The keyword arguments the registered model ``name`` takes, e.g. ``("num_classes", "width", "in_channels")``."""
    _check_name(name)
    return tuple(inspect.signature(_REGISTRY[name]).parameters)


def model_input_shape(name: str) -> tuple[int, int, int]:
    """Default (C, H, W) input shape of a registered model."""
    _check_name(name)
    return _INPUT_SHAPES[name]


def default_input_shape(model: nn.Module, batch: int = 1) -> tuple[int, ...] | None:
    """Input shape ``(batch, C, H, W)`` of a trained or registry-built model, or ``None`` when it cannot be told.

    Reads the input the model was trained on (``model.sc_input``, float inputs only), else ``model.sc_arch``,
    where an ``in_channels`` argument replaces the registered channel count.
    """
    card = getattr(model, INPUT_ATTR, None)
    if (
        isinstance(card, dict)
        and isinstance(card.get("shape"), list)
        and str(card.get("dtype", "")).startswith("float")
    ):
        return (batch, *(int(d) for d in card["shape"]))
    arch = getattr(model, ARCH_ATTR, None)
    if not arch or arch.get("name") not in _REGISTRY:
        return None
    c, h, w = _INPUT_SHAPES[arch["name"]]
    kwargs = arch.get("kwargs", {})
    if "in_features" in kwargs and kwargs["in_features"] != c * h * w:
        return None
    return (batch, int(kwargs.get("in_channels", c)), h, w)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`, e.g. ``"resnet18"``.
    num_classes : int
        Size of the classifier output.
    **kwargs
        Passed to the factory, e.g. ``width`` (channels of the first stage) or ``in_channels``. They must be
        JSON-serialisable, since they are saved with the weights.
    """
    _check_name(name)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    arch = {"name": name, "kwargs": {"num_classes": int(num_classes), **kwargs}}
    try:
        json.dumps(arch)
    except TypeError as e:
        raise ConfigError(f"model arguments must be JSON-serialisable to be saved: {e}") from None
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    setattr(model, ARCH_ATTR, arch)
    return model


def _scaled(width: int, factor: int) -> int:
    return max(1, int(width) * factor)


# ---------------------------------------------------------------------------------------------------------
# ResNets for 32x32 inputs


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem without max-pool, stages of :class:`BasicBlock`, global pool, linear head.

    Input (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, c_in = [], widths[0]
        for i, (n, c) in enumerate(zip(blocks, widths, strict=True)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c_in, c, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c
            layers.append(nn.Sequential(*stage))
        self.layers = nn.ModuleList(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model
def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> nn.Module:
    """The paper's CIFAR ResNet-18: widths (w, 2w, 4w, 8w), 2 blocks each; 11,173,962 params at w=64, 10 classes."""
    return ResNet([2, 2, 2, 2], [_scaled(width, f) for f in (1, 2, 4, 8)], num_classes, in_channels)


@register_model
def resnet20(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> nn.Module:
    """He et al. (2016) CIFAR ResNet-20: widths (w, 2w, 4w), 3 blocks each, projection shortcuts (option B)."""
    return ResNet([3, 3, 3], [_scaled(width, f) for f in (1, 2, 4)], num_classes, in_channels)


@register_model
def resnet56(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> nn.Module:
    """He et al. (2016) CIFAR ResNet-56: widths (w, 2w, 4w), 9 blocks each, projection shortcuts (option B)."""
    return ResNet([9, 9, 9], [_scaled(width, f) for f in (1, 2, 4)], num_classes, in_channels)


# ---------------------------------------------------------------------------------------------------------
# VGG


_VGG16 = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv stages, 5 max-pools, a linear head on the 1x1 map."""

    def __init__(self, cfg: list, width: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = _scaled(width, v)
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def vgg16_bn(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> nn.Module:
    """VGG-16 with BatchNorm (CIFAR variant, one linear classifier); 14.7M params at w=64."""
    return VGG(_VGG16, width, num_classes, in_channels)


# ---------------------------------------------------------------------------------------------------------
# Small nets for the 8x8 digits set


@register_model(input_shape=(1, 8, 8))
def cnn(num_classes: int = 10, width: int = 32, in_channels: int = 1) -> nn.Module:
    """Small CNN for 8x8 inputs (the 8x8 digits; the embedded demo's model); every conv is followed by BN + ReLU.

    Shapes for an (N, C, 8, 8) input, C = ``in_channels``::

        conv3x3(w)   -> (N, w, 8, 8)
        conv3x3(2w)  -> (N, 2w, 8, 8)
        max-pool 2   -> (N, 2w, 4, 4)
        conv3x3(2w)  -> (N, 2w, 4, 4)
        global pool  -> (N, 2w)
        linear(4w)   -> (N, 4w), ReLU
        linear       -> (N, num_classes)

    Convs have no bias (BN follows). 65,514 params at the default w=32 and 257,994 at w=64 (10 classes); about
    85% of them are in the second and third convs, so that is where compression has to take them from.
    """
    w1, w2 = _scaled(width, 1), _scaled(width, 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
        nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(w2, _scaled(width, 4)), nn.ReLU(inplace=True),
        nn.Linear(_scaled(width, 4), num_classes),
    )  # fmt: skip


@register_model(input_shape=(1, 8, 8))
def mlp(num_classes: int = 10, width: int = 256, in_features: int = 64) -> nn.Module:
    """Two-hidden-layer MLP on flattened inputs: in -> w -> w -> classes."""
    w = _scaled(width, 1)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, w), nn.ReLU(inplace=True),
        nn.Linear(w, w), nn.ReLU(inplace=True),
        nn.Linear(w, num_classes),
    )  # fmt: skip

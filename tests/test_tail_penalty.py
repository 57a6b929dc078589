"""The rank-targeted ("tail") nuclear penalty: Smoothness("nuclear", w, target_rate=q)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import smoothcompress as sc
from smoothcompress.allocation import plan_ranks
from smoothcompress.layers import layer_weight


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


def _expected(model: nn.Module, rate: float) -> float:
    """``sum over layers of ||W||_F * sum_{i > r} s_i / sqrt(k)``, ``r`` the rank compress gives at ``rate``."""
    ranks = plan_ranks(model, rate)
    total = 0.0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        w = layer_weight(m).detach().double()
        s = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
        r = ranks.get(name, s.numel())
        total += float(w.norm()) * float(s[r:].sum()) / math.sqrt(s.numel())
    return total


@pytest.mark.parametrize("rate", [0.3, 0.6, 0.8])
def test_value_is_the_tail_of_the_allocated_ranks(rate):
    model = _model()
    reg = sc.Smoothness("nuclear", 1.0, target_rate=rate)
    value = float(reg(model))
    assert value == pytest.approx(_expected(model, rate), rel=1e-4)
    assert reg.tail_ranks == plan_ranks(model, rate)
    assert value < float(sc.Smoothness("nuclear", 1.0)(model))  # only a tail of every spectrum


def test_layers_kept_dense_are_not_penalised():
    model = _model()
    reg = sc.Smoothness("nuclear", 1.0, target_rate=0.05)
    reg(model)
    dense = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear) and n not in reg.tail_ranks]
    assert dense  # a small rate leaves some layers dense
    only_dense = sc.Smoothness("nuclear", 1.0, target_rate=0.05, include=dense)
    assert float(only_dense(model)) == 0.0


def test_gradient_shrinks_only_the_tail():
    model = _model(1)
    reg = sc.Smoothness("nuclear", 1.0, target_rate=0.6)
    conv = model[2]
    before = torch.linalg.svdvals(conv.weight.detach().reshape(16, -1))
    reg(model).backward()
    r = reg.tail_ranks["2"]
    with torch.no_grad():
        step = conv.weight - 1e-3 * conv.weight.grad
    after = torch.linalg.svdvals(step.reshape(16, -1))
    tail_drop = (before[r:] - after[r:]).mean()
    head_drop = (before[:r] - after[:r]).mean()
    assert tail_drop > 0 and tail_drop > 3 * head_drop


def test_ranks_are_refreshed_on_schedule():
    model = _model()
    reg = sc.Smoothness("nuclear", 1.0, target_rate=0.6, refresh=5)
    first = [p.clone() for p in (reg(model), *reg._polars)][1:]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.rand_like(p) + 0.5)
    for _ in range(4):
        reg(model)
    assert all(torch.equal(a, b) for a, b in zip(first, reg._polars, strict=True))  # lagged in between
    reg(model)
    assert not all(torch.equal(a, b) for a, b in zip(first, reg._polars, strict=True))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "first", "target_rate": 0.5}, "kind='nuclear'"),
        ({"kind": "nuclear", "target_rate": 1.0}, r"in \(0, 1\)"),
        ({"kind": "nuclear", "target_rate": 0}, r"in \(0, 1\)"),
        ({"kind": "nuclear", "target_rate": 0.5, "proximal": True}, "without proximal"),
        ({"kind": "nuclear", "target_rate": 0.5, "polar": "newton-schulz"}, "polar='svd'"),
    ],
)
def test_bad_settings_are_one_line(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=match) as e:
        sc.Smoothness(kind, 1e-3, **kwargs)
    assert "\n" not in str(e.value)


def test_train_config_passes_the_target_rate():
    from smoothcompress.study.training import TrainConfig, make_regularizer

    reg = make_regularizer(TrainConfig(dataset="digits", model="cnn", reg="nuclear", weight=1e-3, reg_target_rate=0.8))
    assert reg.target_rate == 0.8
    with pytest.raises(ValueError, match="target_rate"):
        TrainConfig(dataset="digits", model="cnn", reg="second", weight=1e-3, reg_target_rate=0.8)

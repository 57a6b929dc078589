"""count_params, count_flops (FlopCounterMode), the per-layer table, check_rate and bisect_boundary."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.accounting import bisect_boundary, check_rate, module_shapes, reshaped_modules


def test_count_params_includes_bn_and_bias():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Linear(4, 2))
    assert sc.count_params(m) == (4 * 3 * 9 + 4) + (4 + 4) + (4 * 2 + 2)


def test_count_params_nonzero():
    m = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        m.weight.zero_()
        m.weight[0, 0] = 1.0
    assert sc.count_params(m, nonzero=True) == 1


def test_count_flops_conv_and_linear():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert sc.count_flops(conv, (2, 3, 16, 16)) == 2 * 2 * 8 * 3 * 9 * 16 * 16
    lin = nn.Linear(10, 5)
    assert sc.count_flops(lin, (4, 10)) == 2 * 4 * 10 * 5


def test_count_flops_leaves_bn_stats_alone():
    model = sc.create_model("resnet20", width=4).train()
    before = model.bn1.running_mean.clone()
    sc.count_flops(model, (1, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before) and model.training


def test_module_shapes_and_reshaped_modules():
    before = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    assert module_shapes(before)["1"] == {
        "weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,), "num_batches_tracked": ()
    }  # fmt: skip
    assert "2" not in module_shapes(before) and "" not in module_shapes(before)
    after = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.PReLU(), nn.Linear(6, 2, bias=False))
    assert reshaped_modules(before, after) == ["0", "1", "2", "3"]
    assert reshaped_modules(before, before) == []


def test_layer_report_identity():
    model = sc.create_model("resnet20", width=4)
    rep = sc.layer_report(model, model, input_shape=(1, 3, 32, 32))
    assert rep.rate == 0.0
    assert all(r.status == "dense" and r.params_before == r.params_after for r in rep.rows)
    assert sum(r.flops_before for r in rep.rows) <= rep.flops_before
    text = str(rep)
    assert "layers.0.0.conv1" in text and "total params" in text
    assert rep.to_dict()["rate"] == 0.0


def test_layer_table_has_one_name():
    assert not hasattr(sc, "Report") and "Report" not in sc.__all__
    assert isinstance(sc.layer_report(nn.Linear(2, 2), nn.Linear(2, 2)), sc.LayerTable)


@pytest.mark.parametrize("rate", [0, 0.0, 0.5, 0.999])
def test_check_rate_accepts_and_returns_float(rate):
    out = check_rate(rate)
    assert out == rate and type(out) is float


@pytest.mark.parametrize(
    ("rate", "match"),
    [
        (True, "must be a number"),
        ("0.5", "must be a number"),
        (None, "must be a number"),
        (float("nan"), "must be a number"),
        (float("inf"), "must be a number"),
        (1.0, r"must be in \[0, 1\)"),
        (-0.1, r"must be in \[0, 1\)"),
    ],
)
def test_check_rate_rejects(rate, match):
    with pytest.raises(ValueError, match=match):
        check_rate(rate)


@given(t=st.floats(0.0, 1.0))
def test_bisect_boundary_brackets_the_switch(t):
    lo, hi = bisect_boundary(lambda x: x < t)
    assert lo <= t <= hi and hi - lo <= max(2.0**-60, math.ulp(hi))
    assert (lo < t or lo == 0.0) and (hi >= t)


def test_bisect_boundary_on_a_step_function():
    """A non-increasing step function, as the allocators use it: saving(x) >= need switches at x = 0.3."""
    lo, hi = bisect_boundary(lambda x: math.floor(10 * (1 - x)) >= 7)
    assert lo < 0.3 + 1e-12 and hi == pytest.approx(0.3, abs=1e-15) and lo == pytest.approx(0.3, abs=1e-15)

"""compress(flops=...): the FLOPs budget alone and with a rate, its record, errors, the CLI flag, the report."""

import dataclasses
import math
import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.accounting import RateUnreachable
from smoothcompress.cli import main
from smoothcompress.factorized import Factorized

ALLOCATIONS = ["global", "global-linear", "uniform", "energy"]


def cnn(c_in, c1, c2, k, stride, classes=5):
    torch.manual_seed(c1 * 100 + c2)
    return nn.Sequential(
        nn.Conv2d(c_in, c1, k, stride, k // 2),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(c2, c2, 3, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c2, classes),
    )


def mlp(d_in, h1, h2, classes=5):
    torch.manual_seed(h1 * 100 + h2)
    return nn.Sequential(nn.Linear(d_in, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, classes))


@st.composite
def small_models(draw):
    """A small CNN or MLP with random shapes, and its input shape (batch included)."""
    if draw(st.booleans()):
        c_in, c1, c2 = draw(st.integers(1, 4)), draw(st.integers(4, 24)), draw(st.integers(4, 24))
        k, stride, hw = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2])), draw(st.integers(6, 14))
        return cnn(c_in, c1, c2, k, stride), (1, c_in, hw, hw)
    d_in, h1, h2 = draw(st.integers(8, 48)), draw(st.integers(8, 48)), draw(st.integers(8, 48))
    return mlp(d_in, h1, h2), (draw(st.integers(1, 3)), d_in)


def flops_fraction(model, small, shape):
    return sc.count_flops(small, shape) / sc.count_flops(model, shape)


def largest_rank_step(small, shape, multiple):
    """Fraction of the model's FLOPs that one rank step (``multiple`` ranks) of a factorized layer costs, at most."""
    by_module = sc.accounting.flops_by_module(small, shape)
    steps = [by_module.get(n, 0) / m.rank for n, m in small.named_modules() if isinstance(m, Factorized)]
    return multiple * max(steps, default=0) / by_module[""]


def smallest_reachable(error: RateUnreachable) -> float:
    return float(re.search(r"flops of at least ([0-9.]+)\.", str(error)).group(1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_shape=small_models(),
    budget=st.floats(0.3, 0.95),
    allocation=st.sampled_from(ALLOCATIONS),
    scheme=st.sampled_from(["channel", "spatial", "auto"]),
    multiple=st.sampled_from([1, 2]),
)
def test_flops_budget_is_met(model_shape, budget, allocation, scheme, multiple):
    model, shape = model_shape
    kwargs = {"allocation": allocation, "scheme": scheme, "rank_multiple": multiple, "input_shape": shape}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tiny layers: coarse rank steps
            small = sc.compress(model, flops=budget, **kwargs)
    except RateUnreachable as e:
        least = smallest_reachable(e)
        assert least > budget
        small = sc.compress(model, flops=least, **kwargs)  # the fraction the message names is reachable
        assert flops_fraction(model, small, shape) <= least + 1e-12
        return
    got = flops_fraction(model, small, shape)
    record = small.sc_compression
    assert got <= budget + 1e-12, (budget, got)
    assert record.flops_requested == budget and record.rate_requested is None
    assert record.flops_achieved == pytest.approx(got, abs=1e-12)  # the plan's count is the traced count
    if scheme != "auto":  # one scheme: the budget is undershot by less than one rank step of one layer
        assert budget - got <= largest_rank_step(small, shape, multiple) + 1e-9, (budget, got)
    x = torch.randn(shape)
    assert small(x).shape == model(x).shape


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_shape=small_models(),
    rate=st.floats(0.05, 0.7),
    budget=st.floats(0.3, 0.95),
    allocation=st.sampled_from(ALLOCATIONS),
    scheme=st.sampled_from(["channel", "auto"]),
)
def test_both_budgets_are_met(model_shape, rate, budget, allocation, scheme):
    model, shape = model_shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = sc.compress(model, rate, allocation, scheme, flops=budget, input_shape=shape)
    except RateUnreachable:
        assume(False)
    removed = 1 - sc.count_params(small) / sc.count_params(model)
    assert removed >= rate - 1e-12 and flops_fraction(model, small, shape) <= budget + 1e-12
    record = small.sc_compression
    assert (record.rate_requested, record.flops_requested) == (rate, budget)
    assert record.rate_achieved == pytest.approx(removed)


def test_flops_budget_favours_high_resolution_layers():
    """At the same parameter rate, a FLOPs budget keeps fewer FLOPs than a parameter budget."""
    model = sc.create_model("resnet20", width=8).eval()
    by_rate = sc.compress(model, 0.5, input_shape=(1, 3, 32, 32)).sc_compression
    by_flops = sc.compress(model, flops=by_rate.flops_achieved).sc_compression
    assert by_flops.flops_achieved <= by_rate.flops_achieved
    assert by_flops.rate_achieved < by_rate.rate_achieved  # fewer parameters removed for the same FLOPs


def test_registry_models_know_their_input_shape_and_rate_defaults_to_none():
    model = sc.create_model("resnet20", width=8).eval()
    small = sc.compress(model, flops=0.5)
    record = small.sc_compression
    assert record.rate_requested is None and record.flops_achieved <= 0.5
    assert record.details["flops"]["input_shape"] == [1, 3, 32, 32]
    plan = sc.plan_compression(model, flops=0.5)
    assert plan.flops_fraction == record.flops_achieved
    assert sc.plan_ranks(model, flops=0.5) == plan.ranks()
    assert sc.compress(model).sc_compression.rate_requested == 0.7  # without flops the default rate stays


def test_flops_one_is_an_exact_copy():
    model, shape = cnn(3, 8, 16, 3, 1), (1, 3, 10, 10)
    small = sc.compress(model, flops=1.0, input_shape=shape)
    assert not any(isinstance(m, Factorized) for m in small.modules())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), small.state_dict().values(), strict=True))
    assert small.sc_compression.flops_achieved == 1.0 and small.sc_compression.rate_achieved == 0.0


def test_unreachable_budget_names_the_smallest_reachable_fraction():
    model, shape = cnn(3, 8, 16, 3, 1), (1, 3, 10, 10)
    with pytest.raises(RateUnreachable, match="out of reach") as info:
        sc.compress(model, flops=0.01, input_shape=shape)
    least = smallest_reachable(info.value)
    assert 0.01 < least < 1
    assert flops_fraction(model, sc.compress(model, flops=least, input_shape=shape), shape) <= least
    with pytest.raises(RateUnreachable):
        sc.compress(model, flops=round(least - 0.001, 3), input_shape=shape)


@pytest.mark.parametrize("flops", [0.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_flops_raises(flops):
    with pytest.raises(ValueError, match="flops must be"):
        sc.compress(cnn(3, 8, 8, 3, 1), flops=flops, input_shape=(1, 3, 8, 8))


def test_missing_input_shape_is_a_one_line_error():
    with pytest.raises(ValueError, match="input_shape") as info:
        sc.compress(mlp(16, 16, 16), flops=0.5)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="input_shape"):
        sc.plan_compression(mlp(16, 16, 16), flops=0.5)


def test_explicit_ranks_count_towards_the_budget():
    model, shape = cnn(3, 16, 16, 3, 1), (1, 3, 10, 10)
    small = sc.compress(model, flops=0.6, ranks={"2": 2}, input_shape=shape)
    assert small[2].rank == 2 and flops_fraction(model, small, shape) <= 0.6


@pytest.mark.filterwarnings("ignore:achieved FLOPs fraction")
def test_a_layer_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    model = Twice()
    small = sc.compress(model, flops=0.5, input_shape=(2, 32))
    assert small.sc_compression.flops_achieved == pytest.approx(flops_fraction(model, small, (2, 32)))
    assert flops_fraction(model, small, (2, 32)) <= 0.5


def test_flops_budget_with_calibration():
    torch.manual_seed(0)
    model = sc.create_model("resnet20", width=8).eval()
    calibration = sc.calibrate(model, torch.randn(64, 3, 32, 32), 64)
    small = sc.compress(model, flops=0.5, calibration=calibration)
    record = small.sc_compression
    assert record.flops_achieved <= 0.5 and "calibration" in record.details
    again = sc.get_method("svd-data").apply(model, None, flops=0.5, calibration=calibration).sc_compression
    assert again == dataclasses.replace(record, method="svd-data", options={**record.options, "budget": "params"})


def test_report_totals_flops_and_latency():
    model = sc.create_model("resnet20", width=8).eval()
    small = sc.compress(model, flops=0.5)
    rep = sc.compress_report(model, small, (2, 3, 32, 32), latency=True, reps=2)
    text = str(rep)
    assert "total FLOPs" in text and "latency" in text and "faster" in text
    assert rep.flops_after / rep.flops_before == pytest.approx(small.sc_compression.flops_achieved)
    assert rep.latency_before > 0 and rep.latency_after > 0 and rep.to_dict()["latency_shape"] == (2, 3, 32, 32)
    assert model.training is False and small.training is False
    with pytest.raises(ValueError, match="input_shape"):
        sc.compress_report(model, small, latency=True)


@pytest.mark.filterwarnings("ignore:achieved FLOPs fraction")
def test_cli_flops(tmp_path, capsys):
    torch.manual_seed(0)
    path = sc.save(sc.create_model("cnn", width=8), tmp_path / "model.safetensors")
    out = tmp_path / "small.safetensors"
    assert main(["compress", str(path), "--flops", "0.5", "-o", str(out)]) == 0
    assert "total FLOPs" in capsys.readouterr().out
    record = sc.load(out).sc_compression
    assert record.flops_requested == 0.5 and record.flops_achieved <= 0.5 and record.rate_requested is None
    assert main(["compress", str(path), "--flops", "0.6", "--rate", "0.6", "-o", str(out)]) == 0
    record = sc.load(out).sc_compression
    assert record.flops_achieved <= 0.6 and record.rate_achieved >= 0.6
    assert main(["compress", str(path), "--flops", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "flops of at least" in err and err.count("\n") == 1
    assert main(["prune", str(path), "--flops", "0.5"]) == 2  # a compress flag only: a parse error, one line


def _objective(plan) -> float:
    """The global allocation's objective: ``sum -log kept energy`` over the layers."""
    return sum(-math.log(max(p.energy, 1e-300)) for p in plan.layers.values())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_shape=small_models(), budget=st.floats(0.3, 0.9))
def test_a_flops_budget_is_never_worse_than_a_parameter_rate_of_equal_flops(model_shape, budget):
    model, shape = model_shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            by_flops = sc.plan_compression(model, flops=budget, input_shape=shape)
        except RateUnreachable:
            assume(False)
        for rate in [i / 40 for i in range(1, 39)]:
            try:
                by_rate = sc.plan_compression(model, rate, input_shape=shape)
            except RateUnreachable:
                break
            if by_rate.flops_fraction <= budget:
                assert _objective(by_flops) <= _objective(by_rate) + 1e-9, (rate, by_rate.flops_fraction)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([0.3, 0.5, 0.7]), name=st.sampled_from(["svd", "svd-seq"]))
def test_flops_budget_methods_remove_flops_or_keep_those_of_the_parameter_plan(rate, name):
    model = cnn(3, 16, 24, 3, 1).eval()
    shape = (1, 3, 12, 12)
    data = torch.randn(64, 3, 12, 12)
    by_params = sc.get_method(name).apply(model, rate, input_shape=shape, data=data, images=64)
    matched = sc.get_method(name, budget="flops-matched")
    by_flops = matched.apply(model, rate, input_shape=shape, data=data, images=64)
    assert sc.count_flops(by_flops, shape) <= sc.count_flops(by_params, shape)
    assert by_flops.sc_compression.flops_requested is not None  # the record holds the FLOPs budget it met
    assert matched.label.endswith("-flops-matched") and by_flops.sc_compression.label == matched.label
    removed = sc.get_method(name, budget="flops").apply(model, rate, input_shape=shape, data=data, images=64)
    assert sc.count_flops(removed, shape) <= (1 - rate) * sc.count_flops(model, shape)
    assert removed.sc_compression.details["budget"] == {"kind": "flops", "rate": rate, "flops_kept": 1 - rate}


def test_a_method_option_at_its_default_leaves_the_sweep_fingerprint_alone():
    from smoothcompress.study.experiment import SweepConfig

    def fingerprint(entry):
        return SweepConfig.from_dict({"compress": {"methods": [entry]}}).fingerprint()

    assert fingerprint({"method": "svd"}) == fingerprint({"method": "svd", "budget": "params"})
    assert fingerprint({"method": "svd"}) != fingerprint({"method": "svd", "budget": "flops"})

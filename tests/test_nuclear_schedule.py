"""Cheap schedules of the nuclear penalty: the polar factor (exact and Newton-Schulz) and the lagged gradient."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.regularize import polar_factor
from smoothcompress.study.training import TrainConfig


def nuclear_terms(model: nn.Module, reg: sc.Smoothness) -> torch.Tensor:
    """The exact penalty of ``model`` (every-step SVD) at ``reg``'s weight."""
    return sc.Smoothness("nuclear", reg.weight, include=reg.include or None, exclude=reg.exclude or None)(model)


def grads(model: nn.Module, value: torch.Tensor) -> list[torch.Tensor]:
    weights = [m.weight for m in model.modules() if hasattr(m, "weight")]
    return list(torch.autograd.grad(value, weights, retain_graph=True))


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), m=st.integers(1, 24), n=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_svd_polar_factor_is_the_nuclear_gradient(b, m, n, seed):
    mats = torch.randn(b, m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = polar_factor(mats)
    assert p.shape == mats.shape
    torch.testing.assert_close(torch.linalg.svdvals(p), torch.ones(b, min(m, n), dtype=torch.float64))
    # <P, M> = ||M||_*, and P is the gradient of the nuclear norm
    torch.testing.assert_close((p * mats).sum((1, 2)), torch.linalg.svdvals(mats).sum(-1))
    x = mats.clone().requires_grad_()
    torch.linalg.svdvals(x).sum().backward()
    torch.testing.assert_close(x.grad, p, atol=1e-8, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 40), n=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_newton_schulz_acts_on_each_singular_value(m, n, seed):
    """``Q = U f(S / ||M||_F) V^T``: f lands in [0.65, 1.25] for relative singular values above 2e-3 (module
    docstring) and stays below 0.05 for those under 1e-5, which the exact gradient would push with weight 1."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    rel = 10 ** (-3 * torch.rand(k, generator=g, dtype=torch.float64))  # in (1e-3, 1]
    rel[-1] = 1e-6 if k > 1 else rel[-1]
    mats = ((u * rel) @ v.T)[None].float()
    q = polar_factor(mats, "newton-schulz").double()[0]
    f = torch.diagonal(u.T @ q @ v)  # the singular value each direction ends with
    torch.testing.assert_close(u.T @ q @ v, torch.diag(f), atol=2e-4, rtol=0)  # same singular vectors
    fro = torch.linalg.vector_norm(rel)
    big = rel / fro > 2e-3
    assert ((f[big] > 0.65) & (f[big] < 1.25)).all(), (rel / fro, f)
    assert (f[rel / fro < 1e-5] < 0.05).all()


def test_polar_factor_of_low_precision_is_float32_and_bad_input_is_refused():
    assert polar_factor(torch.randn(1, 4, 6, dtype=torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown polar method 'qr'"):
        polar_factor(torch.randn(1, 4, 4), "qr")
    with pytest.raises(ValueError, match=r"must be \(B, m, n\)"):
        polar_factor(torch.randn(4, 4))


def test_lagged_penalty_is_exact_on_refresh_steps_and_a_lower_bound_between():
    model = small_model()
    reg = sc.Smoothness("nuclear", 0.1, refresh=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(7):
        value, exact = reg(model), nuclear_terms(model, reg)
        if step % 3 == 0:  # fresh polar factors: the exact value and the exact gradient
            torch.testing.assert_close(value, exact)
            for a, b in zip(grads(model, value), grads(model, exact), strict=True):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        else:  # stale ones: <P, W> <= ||W||_*, strictly once W moved
            assert value < exact
        opt.zero_grad()
        (value + model(torch.randn(4, 3, 8, 8)).square().mean()).backward()
        opt.step()
        reg.after_step(model, 0.05)
    assert reg._polar_step == 6


def test_lagged_polar_factors_round_trip_through_the_state_dict():
    model = small_model()
    reg = sc.Smoothness("nuclear", 0.1, refresh=5)
    reg(model)
    reg.after_step(model, 0.1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    state = reg.state_dict()
    assert len(state["polars"]) > 0 and state["polar_step"] == 0
    again = sc.Smoothness("nuclear", 0.1, refresh=5)
    again.load_state_dict(state)
    torch.testing.assert_close(again(model), reg(model))  # the stored factors, not fresh ones
    assert again(model) < nuclear_terms(model, reg)


def test_newton_schulz_penalty_is_differentiable_and_close_to_exact():
    model = small_model()
    reg = sc.Smoothness("nuclear", 0.1, polar="newton-schulz")
    value = reg(model)
    assert torch.isfinite(value) and 0.6 * nuclear_terms(model, reg) < value <= 1.25 * nuclear_terms(model, reg)
    assert all(torch.isfinite(g).all() for g in grads(model, value))
    assert "polar='newton-schulz'" in repr(reg) and "refresh" not in repr(reg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "nuclear", "refresh": 0}, "refresh must be an integer >= 1"),
        ({"kind": "nuclear", "refresh": 2.5}, "refresh must be an integer >= 1"),
        ({"kind": "nuclear", "polar": "qr"}, "unknown polar method 'qr'"),
        ({"kind": "first", "refresh": 2}, "need kind='nuclear' without proximal"),
        ({"kind": "second", "polar": "newton-schulz"}, "need kind='nuclear' without proximal"),
        ({"kind": "nuclear", "proximal": True, "refresh": 2}, "need kind='nuclear' without proximal"),
    ],
)
def test_bad_schedules_are_refused_with_one_line(kwargs, message):
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=message) as err:
        sc.Smoothness(kind, 1e-3, **kwargs)
    assert "\n" not in str(err.value)


def test_train_config_checks_the_schedule():
    assert TrainConfig(reg="nuclear", weight=1e-3, reg_refresh=10).reg_refresh == 10
    with pytest.raises(ValueError, match="need kind='nuclear'"):
        TrainConfig(reg="first", weight=1e-3, reg_refresh=10)
    with pytest.raises(ValueError, match="unknown polar method"):
        TrainConfig(reg="nuclear", weight=1e-3, reg_polar="lanczos")


def test_the_trainer_default_schedule_applies_to_the_plain_nuclear_penalty_only():
    from smoothcompress.study.training.config import NUCLEAR_SCHEDULE, effective_schedule
    from smoothcompress.study.training.loop import make_regularizer

    default = {"reg_every": NUCLEAR_SCHEDULE.get("reg_every", 1), "reg_refresh": NUCLEAR_SCHEDULE.get("reg_refresh", 1)}
    plain = TrainConfig(reg="nuclear", weight=1e-3)
    assert plain.reg_every is None and effective_schedule(plain) == default  # stored as given, resolved on use
    reg = make_regularizer(plain)
    assert (reg.every, reg.refresh) == (default["reg_every"], default["reg_refresh"])
    assert effective_schedule(TrainConfig.from_dict(plain.to_dict())) == default
    # a schedule the user chose is kept as it is, the other option at 1
    assert effective_schedule(TrainConfig(reg="nuclear", weight=1e-3, reg_refresh=5)) == {
        "reg_every": 1,
        "reg_refresh": 5,
    }
    # a config derived from another one follows its own penalty, not the other's resolved schedule
    second = dataclasses.replace(plain, reg="second")
    assert effective_schedule(second) == {"reg_every": 1, "reg_refresh": 1}
    for other in (
        dict(reg="first", weight=1e-3),
        dict(reg="nuclear", weight=1e-3, reg_proximal=True),
        dict(reg="nuclear", weight=1e-3, reg_polar="newton-schulz"),
        dict(),
    ):
        assert effective_schedule(TrainConfig(**other)) == {"reg_every": 1, "reg_refresh": 1}, other


def test_a_resume_compares_the_schedules_trained_with():
    from smoothcompress.study.training import check_same_settings

    every_step = TrainConfig(reg="nuclear", weight=1e-3, reg_every=1, reg_refresh=1).to_dict()
    check_same_settings(every_step, TrainConfig(reg="nuclear", weight=1e-3, reg_every=1, reg_refresh=1), "r/c.pt")
    with pytest.raises(ValueError, match="reg_every: 1 -> 10"):  # a run trained every step is not continued
        check_same_settings(every_step, TrainConfig(reg="nuclear", weight=1e-3, reg_every=10), "r/c.pt")


def test_lagged_factors_are_not_shared_between_models():
    a, b = small_model(0), small_model(1)
    reg = sc.Smoothness("nuclear", 0.1, refresh=100)
    reg(a)
    torch.testing.assert_close(reg(b), nuclear_terms(b, reg))  # fresh factors for b, not a's


def test_every_is_right_in_a_loop_that_never_calls_after_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    every = sc.Smoothness("nuclear", 1e-3, every=10)
    plain = float(sc.Smoothness("nuclear", 1e-3)(model))
    values = [float(every(model)) for _ in range(20)]  # a user's loop: loss + reg(model), no after_step
    assert sum(values) / len(values) == pytest.approx(plain, rel=1e-5)
    assert sum(v > 0 for v in values) == 2


def test_a_step_counted_by_the_call_is_not_counted_again_by_after_step():
    model = nn.Sequential(nn.Linear(8, 8))
    reg = sc.Smoothness("nuclear", 1e-3, every=3)
    for _ in range(6):
        reg(model)
        reg.after_step(model, 0.1)
    assert reg.step == 6
    prox = sc.Smoothness("nuclear", 1e-3, proximal=True)
    for _ in range(4):
        prox.after_step(model, 0.1)  # a proximal penalty needs no call: after_step counts
    assert prox.step == 4

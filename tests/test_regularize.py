"""Smoothness penalties: known values, a naive reference, gradients, autocast, schedules, layer filters, errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.regularize import _thin_svd

DIMS = {"out": 0, "in": 1, "kh": 2, "kw": 3}


def ramp(shape=(8, 6, 3, 3)) -> torch.Tensor:
    o, i = torch.meshgrid(torch.arange(float(shape[0])), torch.arange(float(shape[1])), indexing="ij")
    return (o + i)[:, :, None, None].expand(shape).contiguous()


def naive_penalty(w: torch.Tensor, kind: str, axes, p: float) -> float:
    """Loop over slices, one difference at a time, in float64 numpy."""
    a = w.detach().double().numpy()
    a = a.reshape(a.shape[0], a.shape[1], 1, 1) if a.ndim == 2 else a
    if kind == "nuclear":
        return float(np.linalg.svd(a.reshape(a.shape[0], -1), compute_uv=False).sum())
    total = 0.0
    for name in axes:
        ax = DIMS[name]
        order = 1 if kind == "first" else 2
        for i in range(a.shape[ax] - order):
            s = [np.take(a, i + k, axis=ax) for k in range(order + 1)]
            d = s[1] - s[0] if order == 1 else s[2] - 2 * s[1] + s[0]
            total += float((np.abs(d) ** p).sum())
    return total


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),  # same shape as the next: batched together
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),  # grouped
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


# ---------------------------------------------------------------------------------------------------------
# Known values and the reference


def test_unit_ramp_known_values():
    w = ramp()
    assert sc.penalty(w, "first").item() == 738.0  # 7*6*9 + 8*5*9 unit differences
    assert sc.penalty(w, "second").item() == 0.0
    assert sc.penalty(w, "first", p=1).item() == 738.0
    assert sc.penalty(w, "first", axes=("out",)).item() == 7 * 6 * 9
    assert sc.penalty(w, "first", axes=("out", "in", "kh", "kw")).item() == 738.0  # constant along the kernel
    nuc = torch.linalg.svdvals(w.reshape(8, -1)).sum()
    torch.testing.assert_close(sc.penalty(w, "nuclear"), nuc, rtol=1e-5, atol=0)


def test_linear_is_conv_with_unit_kernel():
    w = torch.randn(7, 5)
    for kind in sc.PENALTY_KINDS:
        torch.testing.assert_close(sc.penalty(w, kind), sc.penalty(w[:, :, None, None], kind))
    assert sc.penalty(w, "first", axes=("kh", "kw")).item() == 0.0  # length-1 axes have no differences


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 6),) * 2, *(st.integers(1, 4),) * 2),
    linear=st.booleans(),
    kind=st.sampled_from(sc.PENALTY_KINDS),
    axes=st.lists(st.sampled_from(list(DIMS)), min_size=1, max_size=4, unique=True),
    p=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_matches_naive_loop(shape, linear, kind, axes, p, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape[:2] if linear else shape, generator=g, dtype=torch.float64)
    got = sc.penalty(w, kind, axes=axes, p=p).item()
    assert got == pytest.approx(naive_penalty(w, kind, axes, p), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("shape", [(6, 40), (40, 6), (9, 12), (3, 2, 5, 4)])
def test_thin_svd_reconstructs_all_branches(shape):
    torch.manual_seed(0)
    mats = torch.randn(2, shape[0], int(np.prod(shape[1:])), dtype=torch.float64)
    u, s, vh = _thin_svd(mats)
    torch.testing.assert_close((u * s[:, None, :]) @ vh, mats)
    torch.testing.assert_close(s, torch.linalg.svdvals(mats))


# ---------------------------------------------------------------------------------------------------------
# Normalisation


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 8), st.integers(2, 8), st.integers(1, 3), st.integers(1, 3)),
    kind=st.sampled_from(sc.PENALTY_KINDS),
    p=st.sampled_from([1.0, 2.0]),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
def test_normalisation_is_weight_decay_units(shape, kind, p, scale, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    term, rho = sc.normalized_penalty(w, kind, p=p), sc.roughness(w, kind, p=p)
    torch.testing.assert_close(term, rho * w.square().sum())  # ||W||^2 * rho
    torch.testing.assert_close(sc.normalized_penalty(scale * w, kind, p=p), scale**2 * term)  # degree 2
    torch.testing.assert_close(sc.roughness(scale * w, kind, p=p), rho)  # scale-free
    if kind == "nuclear":
        k = min(shape[0], math.prod(shape[1:]))
        assert 1 / math.sqrt(k) - 1e-9 <= rho.item() <= 1 + 1e-9
    elif p == 2:
        torch.testing.assert_close(term, sc.penalty(w, kind))  # exactly the raw penalty


def test_roughness_of_random_weights_is_size_free():
    torch.manual_seed(0)
    for shape in [(64, 64, 3, 3), (256, 128, 3, 3)]:
        w = torch.randn(shape)
        assert sc.roughness(w, "first", axes=("out",)).item() == pytest.approx(2.0, rel=0.05)
        assert sc.roughness(w, "second", axes=("in",)).item() == pytest.approx(6.0, rel=0.05)
        assert 0.9 < sc.roughness(w, "nuclear").item() <= 1.0
    assert sc.roughness(ramp(), "second").item() == 0.0


def test_grouped_conv_is_penalised_per_group():
    torch.manual_seed(0)
    w = torch.randn(8, 2, 3, 3)  # groups=4: blocks (2, 2, 3, 3)
    for kind in sc.PENALTY_KINDS:
        per_group = sum(sc.normalized_penalty(b, kind) for b in w.split(2))
        torch.testing.assert_close(sc.normalized_penalty(w, kind, groups=4), per_group)
    # differences never cross a group boundary: a weight constant inside each group has zero first penalty
    blocky = torch.arange(4.0).repeat_interleave(2)[:, None, None, None].expand(8, 2, 3, 3)
    assert sc.normalized_penalty(blocky, "first", groups=4).item() == 0.0
    assert sc.penalty(blocky, "first").item() > 0


# ---------------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("kind", sc.PENALTY_KINDS)
@pytest.mark.parametrize("shape", [(3, 2, 2, 2), (3, 7), (7, 3), (4, 4)])  # wide, tall (QR first) and square
def test_gradcheck_float64(kind, shape):
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sc.penalty(x, kind), (w,))
    assert torch.autograd.gradcheck(lambda x: sc.normalized_penalty(x, kind), (w,))


@pytest.mark.parametrize("kind", sc.PENALTY_KINDS)
def test_gradcheck_float64_p_and_roughness(kind):
    torch.manual_seed(0)
    w = torch.randn(4, 3, 1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sc.normalized_penalty(x, kind, axes=("out", "kw"), p=1.5), (w,))
    assert torch.autograd.gradcheck(lambda x: sc.roughness(x, kind, axes=("in", "kw"), p=3), (w,))


def test_gradcheck_smoothness_on_a_model():
    model = small_model().double()
    layers = sc.Smoothness("second", 1.0).layers(model)
    groups = [getattr(m, "groups", 1) for m in layers.values()]
    axes = ("out", "in", "kw")

    def f(*weights):
        return 0.1 * sum(
            sc.normalized_penalty(w, "second", axes, groups=g) for w, g in zip(weights, groups, strict=True)
        )

    inputs = tuple(m.weight.detach().clone().requires_grad_() for m in layers.values())
    assert torch.autograd.gradcheck(f, inputs)
    sc.Smoothness("second", 0.1, axes=axes)(model).backward()
    expected = torch.autograd.grad(f(*inputs), inputs)
    for m, g in zip(layers.values(), expected, strict=True):
        torch.testing.assert_close(m.weight.grad, g)


def test_nuclear_gradient_is_stable_at_low_rank():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(576, 64, dtype=torch.float64))
    s = torch.cat([torch.logspace(0, -4, 32), torch.zeros(32)]).double()  # rank 32, condition 1e4
    w = ((u * s) @ v.T).float().requires_grad_()
    sc.penalty(w, "nuclear").backward()
    g = w.grad.double()
    assert torch.isfinite(g).all()
    # a subgradient of ||W||_* at rank r: U_r V_r^T + Z with Z orthogonal to both subspaces and ||Z||_2 <= 1
    ur, vr = u[:, :32], v[:, :32]
    torch.testing.assert_close(ur.T @ g @ vr, torch.eye(32, dtype=torch.float64), atol=2e-3, rtol=0)
    assert torch.linalg.matrix_norm(g, ord=2).item() <= 1 + 1e-3


# ---------------------------------------------------------------------------------------------------------
# The model-level regularizer


def test_smoothness_is_weight_times_sum_of_layer_terms():
    model = small_model()
    for kind in sc.PENALTY_KINDS:
        reg = sc.Smoothness(kind, 0.3)
        expected = sum(
            sc.normalized_penalty(m.weight, kind, groups=getattr(m, "groups", 1)) for m in reg.layers(model).values()
        )
        value = reg(model)
        assert value.ndim == 0 and value.dtype == torch.float32 and value.requires_grad
        torch.testing.assert_close(value, 0.3 * expected, rtol=1e-5, atol=0)


def test_layers_default_filters_and_special_names():
    model = small_model()
    names = ["0", "2", "3", "4", "7"]
    assert list(sc.Smoothness("first", 1.0).layers(model)) == names
    assert list(sc.Smoothness("first", 1.0, exclude=("<first>", "<last>")).layers(model)) == names[1:-1]
    assert list(sc.Smoothness("first", 1.0, include=nn.Linear).layers(model)) == ["7"]
    assert list(sc.Smoothness("first", 1.0, include="[23]", exclude="3").layers(model)) == ["2"]
    resnet = sc.create_model("resnet18", width=4)
    layers = sc.Smoothness("nuclear", 1.0, exclude=["<first>", "<last>", "*shortcut*"]).layers(resnet)
    assert "conv1" not in layers and "fc" not in layers and len(layers) == 16
    wrapped = nn.DataParallel(model)  # wrappers are looked through, names stay the user's
    assert list(sc.Smoothness("first", 1.0, include="7").layers(wrapped)) == ["7"]


def test_zero_weight_is_free_and_on_device():
    model = small_model()
    reg = sc.Smoothness("nuclear", 0.0)
    value = reg(model)
    assert value.item() == 0.0 and value.grad_fn is None and value.device == next(model.parameters()).device
    reg.weight = 0.5  # warm-up changes the weight in place
    assert reg(model).item() > 0


def test_every_k_schedule_scales_active_steps():
    model = small_model()
    full = sc.Smoothness("first", 0.2)(model).item()
    reg = sc.Smoothness("first", 0.2, every=3)
    values = []
    for _ in range(6):
        values.append(reg(model).item())
        reg.after_step(model, lr=0.1)
    assert values[0] == pytest.approx(3 * full) and values[3] == pytest.approx(3 * full)
    assert values[1] == values[2] == values[4] == values[5] == 0.0
    assert reg.state_dict() == {"step": 6, "weight": 0.2}
    other = sc.Smoothness("first", 1.0, every=3)
    other.load_state_dict(reg.state_dict())
    assert other.step == 6 and other.weight == 0.2


def test_after_step_is_a_no_op_without_prox():
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    sc.Smoothness("nuclear", 1.0).after_step(model, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_proximal_nuclear_shrinks_to_exact_low_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Conv2d(4, 8, 3, groups=2))
    model[0].weight.data = model[0].weight.data.double().float()
    reg = sc.Smoothness("nuclear", 0.5, proximal=True)
    assert reg(model).item() == 0.0  # no loss term
    w0 = model[0].weight.detach().clone()
    s0 = torch.linalg.svdvals(w0)
    reg.after_step(model, lr=0.2)  # eta * weight = 0.1
    s1 = torch.linalg.svdvals(model[0].weight.detach())
    eta_w, k = 0.1, 16
    tau = eta_w * s0.norm() / math.sqrt(k)
    expected = (s0 - tau).clamp_min(0) / (1 + eta_w * s0.sum() / (s0.norm() * math.sqrt(k)))
    torch.testing.assert_close(s1, expected, atol=1e-5, rtol=1e-5)
    for _ in range(60):
        reg.after_step(model, lr=0.2)
    s = torch.linalg.svdvals(model[0].weight.detach())
    assert (s < 1e-6 * s[0]).sum() >= 8 and s[0] > 0  # exactly low rank, never all zero
    conv = model[1].weight.detach()
    for block in conv.split(4):  # per group: rank of each (4, 2*3*3) block drops, groups stay separate
        assert torch.linalg.matrix_rank(block.reshape(4, -1)).item() < 4


def test_proximal_writes_through_channels_last():
    torch.manual_seed(0)
    a = nn.Conv2d(6, 12, 3)
    b = nn.Conv2d(6, 12, 3).to(memory_format=torch.channels_last)
    b.weight.data.copy_(a.weight.data)
    # the proximal map (module docstring), computed independently in float64: eta * weight = 0.3, k = 12
    u, s, vh = torch.linalg.svd(a.weight.detach().double().reshape(12, -1), full_matrices=False)
    fro, k = s.norm(), 12
    s_new = (s - 0.3 * fro / math.sqrt(k)).clamp_min(0) / (1 + 0.3 * s.sum() / (fro * math.sqrt(k)))
    expected = ((u * s_new) @ vh).reshape(12, 6, 3, 3).float()
    assert not torch.allclose(expected, a.weight, atol=1e-3)  # the step changes the weight
    param = b.weight
    for m in (a, b):
        sc.Smoothness("nuclear", 1.0, proximal=True).after_step(m, lr=0.3)
    assert b.weight is param and b.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a.weight.detach(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.weight.detach(), expected, rtol=1e-4, atol=1e-5)


def test_nuclear_runs_in_float32_under_bf16_autocast():
    model = small_model()
    reg = sc.Smoothness("nuclear", 1.0)
    ref = reg(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = model(torch.randn(2, 3, 8, 8))
        value = reg(model)
        total = x.float().sum() * 0 + value
    assert x.dtype == torch.bfloat16 and value.dtype == torch.float32
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
    total.backward()
    assert all(torch.isfinite(m.weight.grad).all() for m in reg.layers(model).values())


def test_bf16_weights_are_computed_in_float32():
    w = torch.randn(16, 8, 3, 3).bfloat16()
    for kind in sc.PENALTY_KINDS:
        value = sc.penalty(w, kind)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, sc.penalty(w.float(), kind))
    model = small_model().bfloat16()
    assert sc.Smoothness("second", 1.0)(model).dtype == torch.float32


def test_repr_and_roughness_report():
    reg = sc.Smoothness("first", 1e-3, exclude="<last>", every=2)
    assert "first" in repr(reg) and "every=2" in repr(reg)
    report = reg.roughness(small_model())
    assert list(report) == ["0", "2", "3", "4"] and all(v > 0 for v in report.values())


# ---------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "third"}, "unknown penalty kind 'third'"),
        ({"axes": ("out", "depth")}, r"unknown axis name\(s\) \['depth'\]"),
        ({"axes": ()}, "non-empty"),
        ({"axes": 3}, "non-empty sequence of axis names"),
        ({"axes": ("in", "in")}, "must not repeat"),
        ({"p": 0.5}, "p must be a real number >= 1"),
        ({"weight": -1.0}, "weight must be a finite number >= 0"),
        ({"weight": float("nan")}, "weight must be a finite number >= 0"),
        ({"weight": "big"}, "weight must be a finite number >= 0"),
        ({"every": 0}, "every must be an integer >= 1"),
        ({"kind": "first", "proximal": True}, "only available for kind='nuclear'"),
        ({"include": [3]}, "module name patterns"),
        ({"exclude": 3}, "module name patterns"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = {"kind": "nuclear", "weight": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        sc.Smoothness(**args)


def test_bad_penalty_inputs_raise_value_error():
    with pytest.raises(ValueError, match="unknown penalty kind"):
        sc.penalty(torch.randn(3, 3), "Nuclear")
    with pytest.raises(ValueError, match="2-D .* or 4-D"):
        sc.penalty(torch.randn(3, 3, 3), "first")
    with pytest.raises(ValueError, match="floating-point"):
        sc.penalty(torch.ones(3, 3, dtype=torch.long), "first")
    with pytest.raises(ValueError, match="does not divide"):
        sc.normalized_penalty(torch.randn(6, 2, 3, 3), "first", groups=4)
    reg = sc.Smoothness("first", 1.0)
    with pytest.raises(ValueError, match="weight must be"):
        reg.weight = -0.1


def test_filters_that_match_nothing_raise_value_error():
    model = small_model()
    with pytest.raises(ValueError, match="include entry 'stem' matches no layer of Sequential; layers: '0', '2'"):
        sc.Smoothness("first", 1.0, include="stem")(model)
    with pytest.raises(ValueError, match="exclude entry 'BatchNorm2d' matches no layer"):
        sc.Smoothness("first", 1.0, exclude=nn.BatchNorm2d)(model)
    with pytest.raises(ValueError, match="leave no layer"):
        sc.Smoothness("first", 1.0, exclude="*")(model)
    with pytest.raises(ValueError, match="matches no"):  # a typo fails on step one even while the weight is 0
        sc.Smoothness("first", 0.0, include="fc")(model)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        sc.Smoothness("first", 1.0)(nn.Sequential(nn.ReLU()))


def test_every_combination_of_axes_is_accepted():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2)
    for r in range(1, 5):
        for axes in itertools.combinations(DIMS, r):
            expected = naive_penalty(w, "second", axes, 2)  # axes of length 2 have no second differences
            assert expected == 0.0 or "out" in axes or "in" in axes
            assert sc.penalty(w, "second", axes=axes).item() == pytest.approx(expected, rel=1e-5), axes


def test_proximal_batches_equal_shapes_like_separate_calls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6), nn.Linear(12, 6), nn.Linear(6, 3))
    singles = [nn.Sequential(nn.Linear(12, 6)) for _ in range(2)] + [nn.Sequential(nn.Linear(6, 3))]
    for one, layer in zip(singles, model, strict=True):
        one[0].weight.data.copy_(layer.weight.data)
    sc.Smoothness("nuclear", 0.4, proximal=True).after_step(model, lr=0.5)
    for one, layer in zip(singles, model, strict=True):
        sc.Smoothness("nuclear", 0.4, proximal=True).after_step(one, lr=0.5)
        torch.testing.assert_close(layer.weight, one[0].weight)


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["nuclear", "first", "second"]), scale=st.floats(0.01, 100), seed=st.integers(0, 99))
def test_scale_free_penalty_ignores_the_scale_of_each_weight(kind, scale, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3))
    reg = sc.Smoothness(kind, 0.5, scale_free=True)
    before = reg(model)
    expected = 0.5 * sum(reg.roughness(model).values())
    torch.testing.assert_close(before, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model[0].weight.mul_(scale)
    torch.testing.assert_close(reg(model), before, rtol=1e-4, atol=1e-6)
    assert "scale_free=True" in repr(reg)


def test_scale_free_needs_the_loss_term():
    for kwargs in ({"proximal": True}, {"refresh": 2}):
        with pytest.raises(ValueError, match="scale_free=True needs the loss-term penalty"):
            sc.Smoothness("nuclear", 1e-3, scale_free=True, **kwargs)

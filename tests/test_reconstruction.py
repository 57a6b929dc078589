"""Propagation-aware reconstruction (reconstruct, the -seq methods): exactness, error, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.factorized import Factorized, FactorizedConv2d, FactorizedLinear
from smoothcompress.selection import set_submodule
from smoothcompress.tensorfactor import CPConv2d, TuckerConv2d


def _cnn(seed: int, c: int = 6, bias: bool = False, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    norm = (lambda n: nn.BatchNorm2d(n)) if bn else (lambda n: nn.Identity())
    model = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1, bias=bias),
        norm(c),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias),
        norm(2 * c),
        nn.ReLU(),
        nn.Conv2d(2 * c, 2 * c, 1, bias=bias),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * c * 4 * 4, 10),
    )
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding into them is exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _full_rank_scrambled(model: nn.Module, seed: int) -> nn.Module:
    """Every Conv2d and Linear replaced by a full-rank factorized layer with random factors (and bias)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d):
            new = FactorizedConv2d.from_dense(m, min(m.weight.shape[0], m.weight[0].numel()))
        elif isinstance(m, nn.Linear):
            new = FactorizedLinear.from_dense(m, min(m.weight.shape))
        else:
            continue
        with torch.no_grad():
            for p in new.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * p.std().clamp_min(0.1))
        set_submodule(out, name, new)
    return out


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    c=st.integers(2, 8),
    bias=st.booleans(),
    bn=st.booleans(),
)
def test_full_rank_reconstruction_is_exact(seed, c, bias, bn):
    model = _cnn(seed, c, bias, bn)
    scrambled = _full_rank_scrambled(model, seed)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    result = sc.reconstruct(model, scrambled, x, images=64, samples=4096)
    assert not result.skipped and len(result.order) == 4
    with torch.no_grad():
        want, got = model(x), scrambled(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
    assert all(v["error_after"] < 1e-5 for v in result.layers.values())  # float32 factors


def _end_to_end_error(model: nn.Module, small: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - small(x)).pow(2).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rate", [0.5, 0.7])
def test_smaller_end_to_end_error_than_whitened_truncation_at_equal_ranks(seed, rate):
    model = _cnn(seed, c=8)
    x = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    plain = sc.compress(model, rate)
    ranks = {n: r for n, (_, r) in plain.sc_compression.details["ranks"].items()}
    cal = sc.calibrate(model, x, images=256, samples=4096)
    whitened = sc.compress(model, None, ranks=ranks, calibration=cal)
    seq = copy.deepcopy(plain)
    sc.reconstruct(model, seq, x, images=256, samples=4096)
    # the calibration inputs are the ones the error is measured on: the closed-form solve of every layer is optimal
    # there given its inputs, which whitened truncation (each layer on the dense inputs) is not
    assert _end_to_end_error(model, seq, x) <= _end_to_end_error(model, whitened, x) * 1.001
    assert _end_to_end_error(model, seq, x) < _end_to_end_error(model, plain, x)


def test_layer_errors_never_grow_and_the_record_says_so():
    model = _cnn(3, c=8)
    x = torch.randn(128, 3, 8, 8)
    small = sc.get_method("svd-seq").apply(model, 0.6, data=x, images=128)
    info = small.sc_compression.details["reconstruction"]
    assert small.sc_compression.method == "svd-seq"
    assert info["images"] == 128 and info["layers"] >= 1
    assert info["mean_error_after"] <= info["mean_error_before"]
    assert [type(m) for m in small.modules() if isinstance(m, Factorized)]  # still factorized, same ranks
    plain = sc.compress(model, 0.6)
    assert sc.count_params(small) == sc.count_params(plain)


def test_the_dense_model_is_not_changed():
    model = _cnn(4)
    before = copy.deepcopy(model.state_dict())
    sc.get_method("svd-seq+bn").apply(model, 0.6, data=torch.randn(64, 3, 8, 8), images=64)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_calibration_that_does_not_fit_is_one_line():
    model = _cnn(0)
    small = sc.compress(model, 0.6)
    with pytest.raises(ValueError, match="do not fit the model") as e:
        sc.reconstruct(model, small, torch.randn(8, 1, 8, 8), images=8)
    assert "\n" not in str(e.value)


def test_a_model_without_factorized_layers_is_refused():
    model = _cnn(0)
    with pytest.raises(ValueError, match="no factorized layer"):
        sc.reconstruct(model, copy.deepcopy(model), torch.randn(8, 3, 8, 8), images=8)


def test_another_reference_model_is_refused():
    small = sc.compress(_cnn(0, c=6), 0.6)
    with pytest.raises(ValueError, match="pass the model that was compressed"):
        sc.reconstruct(_cnn(0, c=4), small, torch.randn(8, 3, 8, 8), images=8)


def test_spatial_layers_are_left_as_they_are_with_a_note():
    model = _cnn(0, c=8)
    small = sc.compress(model, 0.5, scheme="spatial")
    result = sc.reconstruct(model, small, torch.randn(32, 3, 8, 8), images=32)
    spatial = [n for n, m in small.named_modules() if isinstance(m, FactorizedConv2d) and m.scheme == "spatial"]
    assert spatial and all("scheme 'spatial'" in result.skipped[n] for n in spatial)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), scheme=st.sampled_from(["cp", "tucker"]), ranks=st.tuples(*[st.integers(1, 6)] * 2))
def test_tensor_layers_get_their_last_factor_solved_and_no_layer_error_grows(seed, scheme, ranks):
    pytest.importorskip("tensorly")
    model = _cnn(seed, c=6)
    x = torch.randn(128, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    small = sc.compress(model, None, scheme=scheme, ranks={"0": ranks[0], "3": ranks[1], "6": 4, "9": 3})
    firsts = {n: m.first.weight.clone() for n, m in small.named_modules() if isinstance(m, (CPConv2d, TuckerConv2d))}
    done = sc.reconstruct(model, small, x, images=128, samples=2048)
    assert not done.skipped and firsts
    for name, info in done.layers.items():
        assert info["solved"] == ("last factor" if name in firsts else "layer")
        # the solve minimises the layer's output error plus a ridge towards the fit: it cannot end above the fit
        assert info["error_after"] <= info["error_before"] * (1 + 1e-6) + 1e-9
    modules = dict(small.named_modules())
    for name, before in firsts.items():  # only the last factor changes
        assert torch.equal(modules[name].first.weight, before)


@pytest.mark.parametrize(
    "geometry",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 2, "padding": "same"},
        {"kernel_size": (4, 3), "padding": "same", "dilation": (1, 2)},
        {"kernel_size": 3, "stride": 2, "padding": (0, 2), "padding_mode": "reflect"},
    ],
)
def test_an_exact_tensor_layer_stays_exact(geometry):
    pytest.importorskip("tensorly")
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, **geometry), nn.ReLU(), nn.Conv2d(4, 6, **{**geometry, "stride": 1}), nn.Flatten()
    ).double()
    x = torch.randn(128, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    small, exact = copy.deepcopy(model), []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):  # Tucker-2 at full mode ranks: exact
            set_submodule(small, name, TuckerConv2d.from_dense(m, max(m.weight.shape[:2])))
            exact.append(name)
    done = sc.reconstruct(model, small, x, images=128, samples=2048)
    assert [n for n, v in done.layers.items() if v["solved"] == "last factor"] == exact
    with torch.no_grad():
        want, got = model(x), small(x)
    # float32 moment products: a few 1e-6 of the scale; a misaligned solve is off by tenths
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_cp_seq_beats_cp_end_to_end_on_the_calibration_inputs():
    pytest.importorskip("tensorly")
    model = _cnn(6, c=8)
    x = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    cp = sc.get_method("cp").apply(model, 0.7)
    seq = sc.get_method("cp-seq").apply(model, 0.7, data=x, images=256)
    assert sc.count_params(seq) == sc.count_params(cp)
    assert seq.sc_compression.details["reconstruction"]["layers"] == len(cp.sc_compression.details["ranks"])
    assert _end_to_end_error(model, seq, x) < _end_to_end_error(model, cp, x)


def test_needs_data():
    with pytest.raises(ValueError, match="needs calibration data"):
        sc.get_method("svd-seq").apply(_cnn(0), 0.6)


def test_a_solve_from_fewer_vectors_than_inputs_is_warned_of_with_what_would_do():
    model = _cnn(0, c=6)  # the Linear at the end has 192 inputs: one vector an image
    small = sc.compress(model, 0.5)
    with pytest.warns(
        UserWarning, match=r"1 layer\(s\) of the sequential solve saw fewer .*'9': 32 for d=192\).*Pass images >= 192\."
    ):
        sc.reconstruct(model, small, torch.randn(32, 3, 8, 8), images=32)
    with pytest.warns(UserWarning, match=r"The calibration source has 32 images, fewer than the 192 needed"):
        sc.reconstruct(model, small, torch.randn(32, 3, 8, 8), images=1000)
    with pytest.warns(UserWarning, match=r"Pass samples >= 192 \(each layer keeps at most 100 input vectors\)"):
        sc.reconstruct(model, small, torch.randn(512, 3, 8, 8), images=512, samples=100)

"""CP and Tucker-2 schemes (smoothcompress.tensorfactor): exactness, conv geometry, allocation, save/load, ONNX."""

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.errors import ConfigError
from smoothcompress.extras import MissingExtra
from smoothcompress.tensorfactor import (
    CPConv2d,
    TensorFit,
    TuckerConv2d,
    cp_contraction,
    decompose_cp,
    decompose_tucker,
    tensor_params,
    tucker_ranks,
)

pytest.importorskip("tensorly")

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = sc.create_model("cnn", width=16)
    model(torch.randn(16, 1, 8, 8))  # training-mode pass: non-trivial BatchNorm statistics
    return model.eval()


def _rank_r_kernel(shape, rank: int, seed: int = 0) -> torch.Tensor:
    a, b, v, h = (torch.randn(n, rank, generator=_gen(seed + i), dtype=torch.float64) for i, n in enumerate(shape))
    return torch.einsum("oq,cq,iq,jq->ocij", a, b, v, h)


def test_tucker_at_full_ranks_is_exact():
    w = torch.randn(6, 4, 3, 2, generator=_gen(1), dtype=torch.float64)
    f = decompose_tucker(w, 6)
    assert f.energy == pytest.approx(1.0, abs=1e-10)
    conv = nn.Conv2d(4, 6, (3, 2), bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    layer = TuckerConv2d.from_factors(conv, f)
    assert (layer.out_rank, layer.in_rank) == (6, 4)
    torch.testing.assert_close(layer.dense_weight(), w)


def test_cp_recovers_an_exact_rank_r_kernel_and_error_falls_with_rank():
    w = _rank_r_kernel((7, 5, 3, 3), 3)
    f = decompose_cp(w, 3)
    assert f.energy == pytest.approx(1.0, abs=1e-6)
    conv = nn.Conv2d(5, 7, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    torch.testing.assert_close(CPConv2d.from_factors(conv, f).dense_weight(), w, rtol=1e-4, atol=1e-4)
    noise = torch.randn(8, 6, 3, 3, generator=_gen(2), dtype=torch.float64)
    energies = [decompose_cp(noise, r).energy for r in (1, 4, 16, 48)]
    assert energies == sorted(energies) and energies[-1] > energies[0]


def test_cp_plans_its_contractions_on_wide_layers_when_torch_plans_einsums(monkeypatch):
    wide, narrow = ((256, 256, 3, 3), 341), ((32, 32, 3, 3), 39)  # Khatri-Rao products of 67M and 120k entries
    assert cp_contraction(*wide) == ("einsum" if torch.backends.opt_einsum.is_available() else "core")
    assert cp_contraction(*narrow) == "core"
    monkeypatch.setattr(torch.backends.opt_einsum, "enabled", False)
    assert cp_contraction(*wide) == "core"


@settings(max_examples=8, deadline=None)
@given(
    shape=st.tuples(st.integers(4, 12), st.integers(4, 12), st.integers(1, 3), st.integers(1, 3)),
    rank=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_both_contractions_fit_the_same_cp_model(shape, rank, seed):
    """The einsum path changes how CP-ALS multiplies, not what it fits: from the same SVD start both reach the same
    error, on a kernel of exact CP rank and on noise (float64, 1e-6)."""
    kernels = (_rank_r_kernel(shape, rank, seed), torch.randn(*shape, generator=_gen(seed), dtype=torch.float64))
    fits = {}
    for contraction in ("core", "einsum"):
        with pytest.MonkeyPatch.context() as m:  # the fit cache keys on the contraction: no fit is reused
            m.setattr("smoothcompress.tensorfactor.cp_contraction", lambda shape, rank, c=contraction: c)
            fits[contraction] = [decompose_cp(w, rank).energy for w in kernels]
    assert fits["einsum"] == pytest.approx(fits["core"], abs=1e-6)


def test_decompositions_are_deterministic_and_keep_the_dtype():
    w = torch.randn(8, 6, 3, 3, generator=_gen(3))
    for decompose in (decompose_cp, decompose_tucker):
        one, two = decompose(w, 5), decompose(w, 5)
        assert all(torch.equal(a, b) for a, b in zip(one.weights, two.weights, strict=True))
        assert all(t.dtype == torch.float32 for t in one.weights)


def test_the_output_scale_weights_the_error_and_full_tucker_stays_exact():
    w = torch.randn(6, 5, 3, 3, generator=_gen(4), dtype=torch.float64)
    d = torch.rand(6, generator=_gen(5), dtype=torch.float64) + 0.1
    f = decompose_tucker(w, 6, out_scale=d)
    conv = nn.Conv2d(5, 6, 3).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    torch.testing.assert_close(TuckerConv2d.from_factors(conv, f).dense_weight(), w)
    cp = CPConv2d.from_factors(conv, decompose_cp(w, 4, out_scale=d))
    scaled = d[:, None, None, None] * (w - cp.dense_weight().detach())
    assert 1 - (scaled.norm() / (d[:, None, None, None] * w).norm()) ** 2 == pytest.approx(cp.energy, abs=1e-6)


conv_configs = st.fixed_dictionaries(
    {
        "c_in": st.integers(1, 5),
        "c_out": st.integers(1, 5),
        "kernel": st.tuples(st.integers(1, 3), st.integers(1, 3)).filter(lambda k: k != (1, 1)),
        "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "padding": st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.just("same"), st.just("valid")),
        "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "bias": st.booleans(),
        "padding_mode": st.sampled_from(["zeros", "reflect", "circular"]),
        "scheme": st.sampled_from(["cp", "tucker"]),
        "rank": st.integers(1, 6),
    }
)


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs)
def test_the_conv_sequence_computes_the_reconstructed_kernel_with_the_geometry(cfg):
    stride = (1, 1) if cfg["padding"] == "same" else cfg["stride"]
    if cfg["padding"] == "same":  # even kernels with "same": torch pads asymmetrically, and warns
        cfg["kernel"] = tuple(k | 1 for k in cfg["kernel"])
        cfg["padding_mode"] = "zeros"
    torch.manual_seed(0)
    conv = nn.Conv2d(cfg["c_in"], cfg["c_out"], cfg["kernel"], stride, cfg["padding"], cfg["dilation"],
                     bias=cfg["bias"], padding_mode=cfg["padding_mode"]).double()  # fmt: skip
    cls = CPConv2d if cfg["scheme"] == "cp" else TuckerConv2d
    full = cls(cfg["c_in"], cfg["c_out"], cfg["kernel"], 1).full_rank
    layer = cls.from_dense(conv, min(cfg["rank"], full))
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (cfg["c_in"], cfg["c_out"], cfg["kernel"])
    assert (layer.second.bias is not None) == cfg["bias"]
    shape = tuple(conv.weight.shape)
    assert sum(p.numel() for n, p in layer.named_parameters() if n.endswith("weight")) == tensor_params(
        shape, cfg["scheme"], layer.rank
    )
    equivalent = nn.Conv2d(cfg["c_in"], cfg["c_out"], cfg["kernel"], stride, cfg["padding"], cfg["dilation"],
                           bias=cfg["bias"], padding_mode=cfg["padding_mode"]).double()  # fmt: skip
    with torch.no_grad():
        equivalent.weight.copy_(layer.dense_weight())
        if cfg["bias"]:
            equivalent.bias.copy_(conv.bias)
    size = 2 * max(cfg["kernel"]) * max(cfg["dilation"]) + 3
    x = torch.randn(2, cfg["c_in"], size, size + 1, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), equivalent(x))
    if cfg["scheme"] == "tucker" and layer.rank == full:  # full Tucker ranks: the dense conv itself
        with torch.no_grad():
            torch.testing.assert_close(layer(x), conv(x))


def test_tucker_ranks_follow_the_channel_counts():
    assert tucker_ranks(64, 32, 64) == (64, 32)
    assert tucker_ranks(64, 32, 16) == (16, 8)
    assert tucker_ranks(3, 10, 1) == (1, 1)
    assert all(a <= b for a, b in zip(tucker_ranks(9, 4, 3), tucker_ranks(9, 4, 4), strict=True))


def test_the_fit_grid_interpolates_a_non_decreasing_energy():
    fit = TensorFit(torch.randn(8, 8, 3, 3, generator=_gen(6)), "cp")
    kept = fit.kept_energy()
    assert kept.shape == (fit.max_rank,) and fit.grid[-1] == fit.max_rank
    assert (kept.diff() >= 0).all() and float(kept[0]) > 0 and float(kept[-1]) <= 1
    assert fit.params(fit.max_rank) < 8 * 8 * 9 <= fit.params(fit.max_rank + 1)
    for r in fit.grid:
        assert float(kept[r - 1]) >= fit.factors(r).energy - 1e-12


@pytest.mark.parametrize("scheme", ["cp", "tucker"])
def test_compress_meets_the_rate_and_the_plan_counts_the_parameters(cnn, scheme):
    plan = sc.plan_compression(cnn, 0.5, scheme=scheme)
    small = sc.compress(cnn, 0.5, scheme=scheme)
    assert 0.5 <= small.sc_compression.rate_achieved == plan.rate
    assert sc.count_params(small) == plan.params_after
    named = dict(small.named_modules())
    for name, lp in plan.layers.items():
        if lp.rank is None:
            continue
        layer = named[name]
        want = {"cp": CPConv2d, "tucker": TuckerConv2d}[scheme] if lp.scheme == scheme else sc.FactorizedLinear
        assert isinstance(layer, want) and layer.rank == lp.rank
        assert sum(p.numel() for n, p in layer.named_parameters() if n.endswith("weight")) == lp.params_after
    assert {lp.scheme for lp in plan.layers.values()} <= {scheme, "channel", None}
    assert small.sc_compression.method == scheme


@pytest.mark.filterwarnings("ignore:achieved FLOPs fraction")
@pytest.mark.parametrize("scheme", ["cp", "tucker"])
def test_a_flops_budget_counts_the_tensor_layers(cnn, scheme):
    plan = sc.plan_compression(cnn, flops=0.6, scheme=scheme, input_shape=(1, 1, 8, 8))
    small = sc.compress(cnn, flops=0.6, scheme=scheme, input_shape=(1, 1, 8, 8))
    assert plan.flops_after == sc.count_flops(small, (1, 1, 8, 8)) <= 0.6 * plan.flops_before


@pytest.mark.parametrize("name", ["cp+bn", "tucker"])
def test_save_load_round_trip(cnn, name, tmp_path):
    method = sc.get_method(name)
    kwargs = {"data": torch.randn(32, 1, 8, 8, generator=_gen(7)), "images": 32} if method.uses_data() else {}
    small = method.apply(cnn, 0.5, **kwargs)
    path = sc.save(small, tmp_path / "small.safetensors")
    loaded = sc.load(path)
    assert type(loaded[3]) is type(small[3]) and loaded[3].config() == small[3].config()
    assert loaded.sc_compression == small.sc_compression
    with torch.no_grad():
        assert torch.equal(loaded(X), small(X))


def test_onnx_export_of_cp_layers(cnn, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    small = sc.compress(cnn, 0.5, scheme="cp")
    path = sc.export_onnx(small, tmp_path / "small.onnx", (1, 1, 8, 8), dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = small(X)
    got = torch.from_numpy(session.run(["output"], {"input": X.numpy()})[0])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_bad_uses_are_one_line_errors(cnn, monkeypatch):
    with pytest.raises(ConfigError, match="does not take a calibration"):
        sc.compress(cnn, 0.5, scheme="cp", calibration=sc.calibrate(cnn, torch.randn(64, 1, 8, 8), images=64))
    with pytest.raises(ValueError, match="1x1 conv"):
        CPConv2d.from_dense(nn.Conv2d(4, 4, 1), 2)
    with pytest.raises(ValueError, match="scheme"):
        sc.get_method("cp", scheme="channel")
    monkeypatch.setitem(sys.modules, "tensorly", None)
    with pytest.raises(MissingExtra, match=r"smoothcompress\[tensor\]") as e:
        decompose_cp(torch.randn(3, 3, 3, 3), 2)
    assert "\n" not in str(e.value)

"""Factorized layers and the functional core of the SVD compression: exactness, optimality, shapes, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress import factorized
from smoothcompress.batchnorm import bn_scale

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||; the absolute error when ``b`` is all zeros (outputs that see only padding)."""
    scale = b.norm()
    return float((a - b).norm() / scale) if scale > 0 else float((a - b).norm())


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    return {
        "c_in": draw(st.integers(1, 6)),
        "c_out": draw(st.integers(1, 6)),
        "kernel_size": (kh, kw),
        "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": (ph, pw),
        "dilation": (dh, dw),
        "bias": draw(st.booleans()),
        # input large enough for at least one output pixel
        "hw": (dh * (kh - 1) + 1 + draw(st.integers(0, 5)), dw * (kw - 1) + 1 + draw(st.integers(0, 5))),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(), scheme=st.sampled_from(["channel", "spatial"]), dtype=st.sampled_from(list(TOL)))
def test_full_rank_conv_is_exact(cfg, scheme, dtype):
    torch.manual_seed(cfg["seed"])
    conv = nn.Conv2d(
        cfg["c_in"], cfg["c_out"], cfg["kernel_size"], cfg["stride"], cfg["padding"], cfg["dilation"], bias=cfg["bias"]
    ).to(dtype)
    full = sc.FactorizedConv2d.from_dense(conv, rank=1, scheme=scheme).full_rank
    fac = sc.FactorizedConv2d.from_dense(conv, rank=full, scheme=scheme)
    x = torch.randn(2, cfg["c_in"], *cfg["hw"], dtype=dtype)
    with torch.no_grad():
        assert rel_err(fac(x), conv(x)) < TOL[dtype]
        assert rel_err(fac.dense_weight(), conv.weight) < TOL[dtype]
    assert fac.rank == fac.full_rank == full
    assert fac.energy == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 12),
    n_out=st.integers(1, 12),
    bias=st.booleans(),
    dtype=st.sampled_from(list(TOL)),
    seed=st.integers(0, 2**16),
)
def test_full_rank_linear_is_exact(n_in, n_out, bias, dtype, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias).to(dtype)
    fac = sc.FactorizedLinear.from_dense(lin, rank=min(n_in, n_out))
    x = torch.randn(5, n_in, dtype=dtype)
    with torch.no_grad():
        assert rel_err(fac(x), lin(x)) < TOL[dtype]


@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_full_rank_exact_with_padding_modes(padding_mode, scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, (3, 2), padding=(1, 1), padding_mode=padding_mode).double()
    fac = sc.FactorizedConv2d.from_dense(conv, rank=min(5 * 2, 3 * 3) if scheme == "spatial" else 5, scheme=scheme)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(fac(x), conv(x)) < 1e-10


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_full_rank_exact_with_same_padding(scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 4), padding="same", dilation=(2, 1)).double()
    fac = sc.FactorizedConv2d.from_dense(conv, rank=min(6 * 4, 4 * 3) if scheme == "spatial" else 6, scheme=scheme)
    x = torch.randn(1, 4, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        assert fac(x).shape == conv(x).shape
        assert rel_err(fac(x), conv(x)) < 1e-10


def test_matricize_layouts():
    w = torch.randn(5, 3, 2, 4)
    assert torch.equal(factorized.matricize(w, "channel"), w.reshape(5, 24))
    m = factorized.matricize(w, "spatial")
    assert m.shape == (5 * 4, 3 * 2)
    o, c, i, j = 3, 1, 1, 2
    assert m[o * 4 + j, c * 2 + i] == w[o, c, i, j]
    # the transpose of Jaderberg's (C_in*kh) x (C_out*kw) arrangement: same singular values
    jaderberg = w.permute(1, 2, 0, 3).reshape(3 * 2, 5 * 4)
    assert torch.allclose(torch.linalg.svdvals(m), torch.linalg.svdvals(jaderberg), atol=1e-5)


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("shape", [(8, 6, 3, 3), (6, 20, 1, 1), (12, 5)])
def test_truncation_is_eckart_young_optimal(scheme, shape):
    """At rank r the squared error is exactly the tail of the spectrum, and `energy` is the kept fraction."""
    torch.manual_seed(1)
    w = torch.randn(*shape, dtype=torch.float64)
    s = sc.spectrum(w, scheme)
    for r in (1, 2, len(s) // 2 + 1):
        f = factorized.factorize_weight(w, r, scheme)
        if w.dim() == 2:
            w_r = f.second @ f.first
        else:
            effective = "channel" if shape[2:] == (1, 1) else scheme  # spatial on 1x1 is channel
            mod = sc.FactorizedConv2d(w.shape[1], w.shape[0], w.shape[2:], r, scheme=effective)
            mod = mod.double()
            mod.first.weight.data, mod.second.weight.data = f.first, f.second
            w_r = mod.dense_weight()
        err = float((w - w_r).detach().norm() ** 2)
        assert err == pytest.approx(float((s[r:] ** 2).sum()), rel=1e-9, abs=1e-12)
        assert f.energy == pytest.approx(float((s[:r] ** 2).sum() / (s**2).sum()), rel=1e-9)


def test_out_scale_minimises_the_scaled_error():
    """With a BatchNorm scale g, the factors are optimal for ||diag(g)(W - W_r)||, and beat plain truncation there."""
    torch.manual_seed(2)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    g = torch.rand(16, dtype=torch.float64) * 3 + 0.01
    s_scaled = sc.spectrum(w, out_scale=g)
    assert torch.allclose(s_scaled, torch.linalg.svdvals(g[:, None] * w.reshape(16, -1)))
    for r in (2, 5, 9):
        errs = {}
        for name, scale in (("bn", g), ("plain", None)):
            f = factorized.factorize_weight(w, r, "channel", out_scale=scale)
            w_r = f.second.flatten(1) @ f.first.flatten(1)
            errs[name] = float((g[:, None] * (w.reshape(16, -1) - w_r)).norm() ** 2)
        assert errs["bn"] == pytest.approx(float((s_scaled[r:] ** 2).sum()), rel=1e-8)
        assert errs["bn"] < errs["plain"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_out_scale_handles_dead_channels(dtype):
    """A BatchNorm with gamma = 0 for some channels must not produce inf/nan factors, and full rank stays exact
    where the network can see it (rows scaled by g)."""
    torch.manual_seed(3)
    w = torch.randn(6, 4, 3, 3, dtype=dtype)
    g = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.5, 1.0], dtype=dtype)
    f = factorized.factorize_weight(w, 3, "channel", out_scale=g)
    assert torch.isfinite(f.first).all() and torch.isfinite(f.second).all()
    full = factorized.factorize_weight(w, 6, "channel", out_scale=g)
    w_full = full.second.flatten(1) @ full.first.flatten(1)
    assert rel_err(g[:, None] * w_full, g[:, None] * w.reshape(6, -1)) < TOL[dtype]
    if dtype == torch.float64:
        assert rel_err(w_full, w.reshape(6, -1)) < 1e-6


def test_gram_decomposition_matches_svd_on_ill_conditioned_matrix():
    torch.manual_seed(4)
    u, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(90, 40, dtype=torch.float64))
    s = torch.logspace(0, -6, 40, dtype=torch.float64)
    m = u @ torch.diag(s) @ v.T
    for mat in (m, m.T):
        dec = factorized.decompose(mat)  # white-box: the Gram-matrix route itself, no public equivalent
        # squaring the condition number costs absolute accuracy ~ eps * s_max: fine for truncation and energies
        assert torch.allclose(dec.s, s, rtol=1e-8, atol=1e-10)


def test_factorized_layer_shapes():
    conv = nn.Conv2d(8, 16, (3, 5), stride=2, padding=(1, 2))
    ch = sc.FactorizedConv2d.from_dense(conv, 4, "channel")
    assert ch.first.weight.shape == (4, 8, 3, 5) and ch.second.weight.shape == (16, 4, 1, 1)
    sp = sc.FactorizedConv2d.from_dense(conv, 4, "spatial")
    assert sp.first.weight.shape == (4, 8, 3, 1) and sp.second.weight.shape == (16, 4, 1, 5)
    assert sp.first.stride == (2, 1) and sp.second.stride == (1, 2)
    assert sp.first.padding == (1, 0) and sp.second.padding == (0, 2)
    assert ch.second.bias is not None and ch.first.bias is None
    x = torch.randn(2, 8, 11, 13)
    assert ch(x).shape == sp(x).shape == conv(x).shape
    lin = sc.FactorizedLinear.from_dense(nn.Linear(10, 7), 3)
    assert lin.first.weight.shape == (3, 10) and lin.second.weight.shape == (7, 3)
    assert sc.count_params(lin) == 3 * 10 + 7 * 3 + 7


def test_spatial_on_pointwise_conv_is_channel():
    conv = nn.Conv2d(8, 6, 1)
    fac = sc.FactorizedConv2d.from_dense(conv, 2, scheme="spatial")
    assert fac.scheme == "channel"


def test_config_rebuilds_the_same_structure():
    conv = nn.Conv2d(5, 9, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), bias=False)
    for scheme in ("channel", "spatial"):
        fac = sc.FactorizedConv2d.from_dense(conv, 3, scheme)
        twin = sc.FactorizedConv2d(**fac.config())
        twin.load_state_dict(fac.state_dict())
        x = torch.randn(1, 5, 8, 8)
        assert torch.equal(twin(x), fac(x))
        assert twin.config() == fac.config()


@pytest.mark.parametrize("rank", [0, -1, 6, 2.0, True])
def test_bad_rank_raises(rank):
    conv = nn.Conv2d(3, 5, 3)
    with pytest.raises(ValueError, match="rank"):
        sc.FactorizedConv2d.from_dense(conv, rank)


def test_grouped_conv_cannot_be_factorized():
    with pytest.raises(ValueError, match="grouped"):
        sc.FactorizedConv2d.from_dense(nn.Conv2d(4, 8, 3, groups=2), 2)


def test_bad_weight_and_scheme_raise():
    with pytest.raises(ValueError, match="shape"):
        factorized.factorize_weight(torch.randn(3, 4, 5), 1)
    with pytest.raises(ValueError, match="scheme"):
        factorized.factorize_weight(torch.randn(3, 4), 1, scheme="diagonal")
    with pytest.raises(ValueError, match="output channels"):
        factorized.factorize_weight(torch.randn(3, 4), 1, out_scale=torch.ones(4))


def test_bn_scale():
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 9.0]))
    expected = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64) / torch.sqrt(
        torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64) + bn.eps
    )
    assert torch.allclose(bn_scale(bn), expected)
    with pytest.raises(ValueError, match="running statistics"):
        bn_scale(nn.BatchNorm2d(3, track_running_stats=False))


def test_compress_leaves_torch_thread_settings_alone(monkeypatch):
    """compress must not change process-wide thread settings, which other threads would see."""
    threads = torch.get_num_threads()

    def forbidden(*args):
        raise AssertionError("compress changed torch's thread count")

    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    torch.manual_seed(0)
    sc.compress(sc.create_model("cnn", width=8), 0.3)
    assert torch.get_num_threads() == threads


def test_sequential_lapack_is_thread_local_and_restored():
    setter = factorized._mkl_thread_local_setter()
    if setter is None:
        pytest.skip("torch is not built with oneMKL here")
    before = setter(0)  # 0: follow the global setting
    try:
        with factorized._sequential_lapack(torch.zeros(8, 8)):
            assert setter(1) == 1  # inside: this thread runs MKL single-threaded
        assert setter(0) == 0  # restored on exit
        with factorized._sequential_lapack(torch.zeros(2048, 2048)):
            assert setter(0) == 0  # large problems keep the caller's threads
    finally:
        setter(before)

"""compress(): rate semantics, rank allocation, exclusion, skipped layers, BatchNorm pairing, the report."""

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.factorized import Factorized


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return sc.create_model("resnet20", width=8).eval()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return sc.create_model("cnn", width=16).eval()


def factorized(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, Factorized)}


def achieved(model, compressed):
    return 1 - sc.count_params(compressed) / sc.count_params(model)


@settings(max_examples=10, deadline=None)
@given(
    rate=st.floats(0.05, 0.8),
    allocation=st.sampled_from(["global", "global-linear", "uniform", "energy"]),
    scheme=st.sampled_from(["channel", "spatial", "auto"]),
)
def test_rate_is_honoured(resnet, rate, allocation, scheme):
    small = sc.compress(resnet, rate, allocation, scheme)
    got = achieved(resnet, small)
    assert rate <= got + 1e-9 and got - rate < 0.01, (rate, got)
    assert small.sc_compression.rate_achieved == pytest.approx(got)
    x = torch.randn(2, 3, 32, 32)
    assert small(x).shape == (2, 10)


def test_factorized_only_when_it_saves(resnet):
    small = sc.compress(resnet, 0.6, scheme="auto")
    named = dict(resnet.named_modules())
    assert factorized(small)
    for name, f in factorized(small).items():
        dense = named[name].weight.numel()
        assert sc.count_params(f) - (f.second.bias.numel() if f.second.bias is not None else 0) < dense
        assert 1 <= f.rank <= f.full_rank and 0.0 < f.energy <= 1.0


def test_input_model_is_not_modified(resnet):
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    types = [type(m) for m in resnet.modules()]
    sc.compress(resnet, 0.5)
    assert [type(m) for m in resnet.modules()] == types
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())


def test_rate_zero_is_an_exact_copy(resnet):
    copy = sc.compress(resnet, 0.0)
    assert copy is not resnet and not factorized(copy)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(copy(x), resnet(x))
    assert sc.count_params(copy) == sc.count_params(resnet)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_rate_outside_range_raises(cnn, rate):
    with pytest.raises(ValueError, match="rate"):
        sc.compress(cnn, rate)


def test_unknown_allocation_and_scheme_raise(cnn):
    with pytest.raises(ValueError, match="allocation"):
        sc.compress(cnn, 0.5, allocation="greedy")
    with pytest.raises(ValueError, match="scheme"):
        sc.compress(cnn, 0.5, scheme="tensor-train")


def test_unreachable_rate_names_the_largest_reachable_rate(cnn):
    total = sc.count_params(cnn)
    # only the last Linear (32x64 -> 10) can be factorized: rank 1 saves 10*64 - (10+64) params
    keep = [n for n, m in cnn.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != "14"]
    reachable = (10 * 64 - 74) / total
    with pytest.raises(ValueError, match="out of reach") as err:
        sc.compress(cnn, 0.5, exclude=keep)
    assert f"at most {reachable:.4f}" in str(err.value)
    small = sc.compress(cnn, math.floor(reachable * 1000) / 1000, exclude=keep)
    assert factorized(small)["14"].rank == 1


def test_explicit_ranks(resnet):
    small = sc.compress(resnet, None, ranks={"layers.1.0.conv2": 3, "fc": 2})
    f = factorized(small)
    assert set(f) == {"layers.1.0.conv2", "fc"}
    assert f["layers.1.0.conv2"].rank == 3 and f["fc"].rank == 2
    assert sc.plan_ranks(resnet, None, ranks={"layers.1.0.conv2": 3, "fc": 2}) == {"layers.1.0.conv2": 3, "fc": 2}


def test_explicit_ranks_with_a_rate(resnet):
    small = sc.compress(resnet, 0.5, ranks={"layers.2.2.conv2": 4})
    assert factorized(small)["layers.2.2.conv2"].rank == 4
    got = achieved(resnet, small)
    assert 0.5 <= got < 0.51


def test_explicit_rank_that_saves_nothing_stays_dense(resnet):
    # conv 16 -> 16, 3x3: rank r costs r * (144 + 16), dense is 2304; r = 15 saves nothing
    small = sc.compress(resnet, None, ranks={"layers.1.1.conv1": 15})
    assert not factorized(small)


@pytest.mark.parametrize(
    ("ranks", "match"),
    [
        ({"layers.1.0.conv2": 0}, "at least 1"),
        ({"layers.1.0.conv2": 145}, "above the full rank 16"),
        ({"layers.1.0.conv2": 2.5}, "must be an int"),
        ({"nope": 2}, "not an eligible layer"),
    ],
)
def test_bad_ranks_raise(resnet, ranks, match):
    with pytest.raises(ValueError, match=match):
        sc.compress(resnet, None, ranks=ranks)


def test_explicit_ranks_beyond_the_rate_raise(resnet):
    with pytest.raises(ValueError, match="explicit ranks alone"):
        sc.compress(resnet, 0.05, ranks={f"layers.2.{i}.conv{j}": 1 for i in range(3) for j in (1, 2)})


def test_no_budget_at_all_is_the_default_rate(cnn):
    """rate=None: 0.7 when neither flops nor ranks is given; with either of them, no parameter budget."""
    default = sc.compress(cnn)
    assert default.sc_compression.rate_requested == sc.allocation.DEFAULT_RATE == 0.7
    explicit = sc.compress(cnn, 0.7).state_dict()
    for small in (default, sc.compress(cnn, None)):
        got = small.state_dict()
        assert got.keys() == explicit.keys() and all(torch.equal(got[k], explicit[k]) for k in got)
    assert sc.allocation.requested_rate(None, None, None) == sc.allocation.requested_rate(None, None, {}) == 0.7
    assert sc.allocation.requested_rate(None, 0.5, None) is None and sc.allocation.requested_rate(0.3, 0.5, None) == 0.3
    assert sc.allocation.requested_rate(None, None, {"14": 2}) is None


def test_allocations_are_registered_objects():
    from smoothcompress.allocation import ALLOCATIONS, Allocation, get_allocation

    assert list(ALLOCATIONS) == ["global", "global-linear", "uniform", "energy"]
    for name, strategy in ALLOCATIONS.items():
        assert isinstance(strategy, Allocation) and strategy.name == name and get_allocation(name) is strategy
    assert [ALLOCATIONS[n].log_loss for n in ALLOCATIONS] == [True, False, True, True]
    with pytest.raises(ValueError, match=r"^unknown allocation 'greedy'; choose one of 'global', 'global-linear'"):
        get_allocation("greedy")


def test_exclude_by_pattern_and_type(resnet):
    small = sc.compress(resnet, 0.15, exclude=["layers.2.*", nn.Linear])
    names = set(factorized(small))
    assert names and not any(n.startswith("layers.2.") or n == "fc" for n in names)
    notes = small.sc_compression.notes
    assert notes["fc"] == "skipped: excluded by Linear"
    assert notes["layers.2.0.conv1"] == "skipped: excluded by layers.2.*"


@pytest.mark.parametrize("rule", ["layer9.*", nn.Conv1d])
def test_exclude_matching_nothing_raises(cnn, rule):
    with pytest.raises(ValueError, match="exclude entry .* matches no layer"):
        sc.compress(cnn, 0.3, exclude=[rule])


class Zoo(nn.Module):
    """A model with every kind of layer compress must skip rather than crash on."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(4, 32, 3, padding=1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.conv1d = nn.Conv1d(16, 16, 3, padding=1)
        self.emb = nn.Embedding(10, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.up(self.depthwise(self.grouped(self.dense(x))))
        x = self.conv1d(x.mean(-1))
        return self.head(x.mean(-1)) + self.emb.weight.sum()


def test_unsupported_layers_are_skipped_and_reported():
    torch.manual_seed(0)
    model = Zoo().eval()
    small = sc.compress(model, 0.1)
    notes = small.sc_compression.notes
    assert notes == {
        "grouped": "skipped: grouped conv (groups=4)",
        "depthwise": "skipped: depthwise conv (groups=32)",
        "up": "skipped: unsupported layer type ConvTranspose2d",
        "conv1d": "skipped: unsupported layer type Conv1d",
        "emb": "skipped: unsupported layer type Embedding",
    }
    assert set(factorized(small)) <= {"dense", "head"}
    assert small(torch.randn(1, 4, 8, 8)).shape == (1, 10)
    report = sc.compress_report(model, small, (1, 4, 8, 8))
    status = {r.name: r.status for r in report.rows}
    assert status["grouped"] == "skipped: grouped conv (groups=4)"
    assert "skipped: unsupported layer type Embedding" in str(report)


def test_compressing_a_compressed_model_skips_its_factors(resnet):
    once = sc.compress(resnet, 0.3)
    twice = sc.compress(once, 0.2)  # the rate is relative to the model passed in
    notes = twice.sc_compression.notes
    assert notes and all(v == "skipped: already factorized" for v in notes.values())
    assert achieved(once, twice) >= 0.2


def test_report_rows_and_data(resnet):
    small = sc.compress(resnet, 0.5)
    report = sc.compress_report(resnet, small, (1, 3, 32, 32))
    rows = {r.name: r for r in report.rows}
    for name, f in factorized(small).items():
        row = rows[name]
        assert row.status == "factorized" and row.rank == f.rank and row.full_rank == f.full_rank
        assert row.energy == pytest.approx(f.energy) and row.params_after < row.params_before
        assert row.flops_after < row.flops_before
    assert report.rate == pytest.approx(achieved(resnet, small))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["extra"]["options"]["allocation"] == "global" and data["extra"]["rate_requested"] == 0.5
    text = str(report)
    assert "factorized" in text and "total params" in text


def test_global_allocation_takes_rank_from_low_rank_layers_first():
    """One layer is nearly rank 2, the other is full rank: global strips the first, uniform hurts both."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 2) @ torch.randn(2, 64) + 1e-3 * torch.randn(64, 64))
    plan = sc.plan_compression(model, 0.4, "global")
    # 40% of 8320 params: layer 0 at rank <= 6 suffices, and loses almost nothing
    assert plan.layers["0"].rank == 6 and plan.layers["0"].energy > 0.9999 and plan.layers["2"].rank is None
    uniform = sc.plan_compression(model, 0.4, "uniform")
    loss = {p: sum(1 - lp.energy for lp in plan_.layers.values()) for p, plan_ in (("g", plan), ("u", uniform))}
    assert loss["g"] < loss["u"]


def test_global_never_strips_a_layer_on_flat_spectra():
    """Orthogonal weights have flat spectra: "global-linear" is indifferent within a layer and strips whole layers
    to rank 1, while "global" (log of kept energy) spreads the cut over the layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 160))
    for layer in model[::2]:
        nn.init.orthogonal_(layer.weight)
    linear = sc.plan_compression(model, 0.5, "global-linear")
    log = sc.plan_compression(model, 0.5, "global")
    assert min(p.rank or 999 for p in linear.layers.values()) == 1
    assert min(p.rank or 999 for p in log.layers.values()) > 8
    assert all(p.energy > 0.1 for p in log.layers.values())


@pytest.mark.parametrize("allocation", ["global", "uniform", "energy"])
def test_rank_multiple(resnet, allocation):
    small = sc.compress(resnet, 0.4, allocation, rank_multiple=8, ranks={"fc": 3})
    ranks = {n: f.rank for n, f in factorized(small).items()}
    assert ranks.pop("fc") == 3  # explicit ranks are taken as given
    assert ranks and all(r % 8 == 0 for r in ranks.values())
    assert 0.4 <= achieved(resnet, small) < 0.41


@pytest.mark.parametrize("k", [0, -8, 2.5, True])
def test_bad_rank_multiple_raises(cnn, k):
    with pytest.raises(ValueError, match="rank_multiple"):
        sc.compress(cnn, 0.3, rank_multiple=k)


def test_uniform_allocation_keeps_the_same_rank_fraction(resnet):
    small = sc.compress(resnet, 0.5, "uniform", bn_aware=False)
    fractions = [f.rank / f.full_rank for f in factorized(small).values() if f.full_rank >= 16]
    assert len(fractions) > 5 and max(fractions) - min(fractions) <= 2 / 16 + 1e-9


def test_energy_allocation_keeps_the_same_energy_fraction(resnet):
    small = sc.compress(resnet, 0.5, "energy", bn_aware=False)
    named = dict(resnet.named_modules())
    lower, upper = [], []
    for name, f in factorized(small).items():
        s2 = sc.spectrum(named[name].weight) ** 2
        kept = torch.cumsum(s2, 0) / s2.sum()
        upper.append(float(kept[f.rank - 1]))
        lower.append(float(kept[f.rank - 2]) if f.rank > 1 else 0.0)
    # one threshold t: every layer keeps the fewest singular values reaching it
    assert max(lower) < min(upper)


def test_auto_scheme_picks_the_better_scheme_per_layer(resnet):
    auto = sc.plan_compression(resnet, 0.5, scheme="auto", bn_aware=False)
    assert {p.scheme for p in auto.layers.values()} - {None} <= {"channel", "spatial"}
    ch = sc.plan_compression(resnet, 0.5, scheme="channel", bn_aware=False)
    sp = sc.plan_compression(resnet, 0.5, scheme="spatial", bn_aware=False)
    lost = {k: sum(1 - p.energy for p in v.layers.values()) for k, v in (("a", auto), ("c", ch), ("s", sp))}
    assert lost["a"] <= min(lost["c"], lost["s"]) + 1e-9


def test_bn_pairs_are_found_by_tracing(resnet):
    pairs = sc.find_bn_pairs(resnet)
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(pairs) == set(convs)
    assert pairs["conv1"] == "bn1" and pairs["layers.1.0.shortcut.0"] == "layers.1.0.shortcut.1"
    assert "fc" not in pairs


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 256, 3)
        self.bn = nn.BatchNorm2d(256)
        self.fc = nn.Linear(256, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_untraceable_model_falls_back_to_plain_truncation():
    model = Untraceable().eval()
    with pytest.warns(UserWarning, match="torch.fx could not trace"):
        small = sc.compress(model, 0.3, bn_aware=True)
    assert small.sc_compression.details["bn_pairs"] == {}
    assert "torch.fx could not trace" in small.sc_compression.details["bn_note"]
    assert small(torch.randn(1, 32, 8, 8)).shape == (1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.compress(model, 0.3)  # plain truncation (the default) does not trace


def test_bn_aware_truncation_weights_by_the_batchnorm_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, 3), nn.BatchNorm2d(32)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.logspace(-2, 1, 32))
    aware = sc.compress(model, None, ranks={"0": 4}, bn_aware=True)
    plain = sc.compress(model, None, ranks={"0": 4})
    assert aware.sc_compression.details["bn_pairs"] == {"0": "1"}
    x = torch.randn(4, 8, 10, 10)
    with torch.no_grad():
        ref = model(x)
        assert (aware(x) - ref).norm() < (plain(x) - ref).norm()

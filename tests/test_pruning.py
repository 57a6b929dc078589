"""prune(): rate honoured, pruned models run, residual shapes stay consistent, no masks left, bad input."""

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.layers import LinearSpec

# Small widths keep every case well under a second; rates are then honoured to channel granularity.
SMALL = {"resnet18": 4, "resnet20": 4, "resnet56": 2, "vgg16_bn": 4, "cnn": 16, "mlp": 64}
TOLERANCE = {"magnitude": 0.01, "magnitude-layerwise": 0.01, "filter": 0.02}


def small_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"width": SMALL[name]} if name in SMALL else {}
    model = sc.create_model(name, **kw)
    _randomize_bn(model)
    return model.eval()


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that pruning a channel changes the function."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


@functools.cache
def pruned_small(name: str, method: str, rate: float) -> tuple[nn.Module, nn.Module]:
    """(model, pruned) for a small registry model, shared between tests; treat both as read-only."""
    model = small_model(name)
    return model, sc.prune(model, rate, method=method)


def example(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *sc.models.model_input_shape(name), generator=torch.Generator().manual_seed(1))


def achieved_rate(before: nn.Module, after: nn.Module, method: str) -> float:
    nonzero = method != "filter"
    return 1.0 - sc.count_params(after, nonzero=nonzero) / sc.count_params(before)


# ---------------------------------------------------------------------------------------------------------
# The rate is honoured


def check_rate(name: str, method: str, rate: float) -> None:
    model = small_model(name)
    pruned = sc.prune(model, rate, method=method)
    assert abs(achieved_rate(model, pruned, method) - rate) <= TOLERANCE[method]
    report = sc.prune_report(model, pruned, method)
    assert report.rate == pytest.approx(achieved_rate(model, pruned, method))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["resnet20", "vgg16_bn", "cnn", "mlp"]),
    method=st.sampled_from(["magnitude", "magnitude-layerwise"]),
    rate=st.floats(0.01, 0.97),
)
def test_magnitude_rate_is_honoured(name, method, rate):
    check_rate(name, method, rate)


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(["resnet20", "vgg16_bn", "cnn"]), rate=st.floats(0.02, 0.95))
def test_filter_rate_is_honoured(name, rate):
    check_rate(name, "filter", rate)


def test_filter_parameter_count_prediction_is_exact():
    """The bisection counts parameters without pruning; the counts must equal those of real pruned copies."""
    from smoothcompress.inputs import as_example
    from smoothcompress.pruning import _FilterPlan, _prunable_layers

    for name in ["resnet20", "vgg16_bn", "mlp"]:
        model = small_model(name)
        plan = _FilterPlan(model, _prunable_layers(model, ()), as_example(model))
        n = len(plan.order)
        for t in (0, n // 3, n - 1):
            assert plan.predicted(t) == sc.count_params(plan.build(t)), (name, t)


def test_filter_falls_back_to_measured_counts(monkeypatch):
    """If the prediction ever disagrees with the pruned model, the rate is still honoured by measuring."""
    from smoothcompress.pruning import _FilterPlan

    predicted = _FilterPlan.predicted
    monkeypatch.setattr(_FilterPlan, "predicted", lambda self, t: int(0.9 * predicted(self, t)))
    model = small_model("cnn")
    pruned = sc.prune(model, 0.5, method="filter")
    assert abs(achieved_rate(model, pruned, "filter") - 0.5) <= TOLERANCE["filter"]


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise"])
def test_magnitude_rate_to_the_parameter(method):
    model = small_model("resnet20")
    total = sc.count_params(model)
    pruned = sc.prune(model, 0.6, method=method)
    kept = sc.count_params(pruned, nonzero=True)
    # Global pruning is exact; layerwise rounds once per layer.
    slack = 0 if method == "magnitude" else len([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert abs(kept - round(0.4 * total)) <= slack


# ---------------------------------------------------------------------------------------------------------
# Pruned models run, and the input model is left alone


@pytest.mark.parametrize("name", sc.list_models())
@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise", "filter"])
def test_every_registry_model_prunes_and_runs(name, method):
    model, pruned = pruned_small(name, method, 0.5)
    x = example(name)
    with torch.no_grad():
        y, y_ref = pruned(x), model(x)
    assert y.shape == y_ref.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, y_ref)  # it did change something
    assert pruned.sc_arch == model.sc_arch
    fresh = small_model(name).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())  # input untouched


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise", "filter"])
def test_rate_zero_is_the_same_function(method):
    model = small_model("resnet20")
    pruned = sc.prune(model, 0.0, method=method)
    assert pruned is not model
    x = example("resnet20")
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    assert sc.count_params(pruned) == sc.count_params(model)


def test_train_mode_and_frozen_parameters_are_kept():
    model = small_model("resnet20").train()
    model.conv1.weight.requires_grad_(False)
    with torch.no_grad():  # tracing needs autograd: prune must turn it on by itself
        pruned = sc.prune(model, 0.5, method="filter")
    assert pruned.training and not pruned.conv1.weight.requires_grad and pruned.fc.weight.requires_grad
    assert model.training and torch.is_grad_enabled()


# ---------------------------------------------------------------------------------------------------------
# Unstructured magnitude: permanent, global versus layerwise


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise"])
def test_magnitude_leaves_no_masks_or_hooks(method):
    model = small_model("cnn")
    pruned = sc.prune(model, 0.7, method=method)
    keys = set(pruned.state_dict())
    assert keys == set(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    for m in pruned.modules():
        assert not m._forward_pre_hooks and not m._forward_hooks
        assert all(type(p) is nn.Parameter for p in m.parameters(recurse=False))
    assert [p.shape for p in pruned.parameters()] == [p.shape for p in model.parameters()]


def _weights(model):
    return [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_global_magnitude_removes_the_smallest_weights():
    model = small_model("cnn")
    pruned = sc.prune(model, 0.5, method="magnitude")
    before, after = (
        torch.cat([w.flatten() for w in _weights(model)]),
        torch.cat([w.flatten() for w in _weights(pruned)]),
    )
    removed = (after == 0) & (before != 0)
    assert removed.any()
    assert before[removed].abs().max() <= before[~removed].abs().min()
    assert torch.equal(after[~removed], before[~removed])  # the survivors are untouched
    # BatchNorm and biases are never zeroed.
    bn = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.count_nonzero(m.weight) == m.weight.numel() for m in bn)


class TransposedProj(nn.Module):
    """A Linear-like layer declared by class attribute, weight stored (in, out) under another name."""

    sc_linear = LinearSpec(transposed=True, weight="w", bias=None)

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, x):
        return x @ self.w


def tied_lm(seed: int = 0) -> nn.Module:
    """Embedding -> Linear-like -> Linear -> head tied to the embedding, GPT-2 style."""
    torch.manual_seed(seed)
    emb, head = nn.Embedding(40, 16), nn.Linear(16, 40, bias=False)
    head.weight = emb.weight
    return nn.Sequential(emb, TransposedProj(16, 32), nn.ReLU(), nn.Linear(32, 16), head)


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise"])
def test_magnitude_prunes_linear_like_layers_and_skips_tied_weights(method):
    model = tied_lm()
    pruned = sc.prune(model, 0.3, method=method)
    record = pruned.sc_compression
    assert torch.equal(pruned[0].weight, model[0].weight) and pruned[4].weight is pruned[0].weight
    assert (pruned[1].w == 0).any() and (pruned[3].weight == 0).any()
    zeroed = int((pruned[1].w == 0).sum() + (pruned[3].weight == 0).sum())
    assert zeroed == record.params_before - record.params_after
    assert record.rate_achieved == pytest.approx(0.3, abs=0.01)
    assert set(record.notes) == {"0", "4"}
    assert record.notes["4"] == "skipped: weight tied to 0 (zeroing it would prune that module too)"
    assert record.notes["0"].startswith("skipped: embedding table")
    pruned(torch.tensor([[1, 2, 3]]))  # no masks or hooks left on the renamed weight
    assert [n for n, _ in pruned.named_parameters()] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise"])
def test_magnitude_rate_beyond_the_untied_weights_is_refused(method):
    model = tied_lm()
    reachable = sc.max_prune_rate(model, method)
    assert reachable == pytest.approx((16 * 32 + 32 * 16) / sc.count_params(model))
    with pytest.raises(ValueError, match=f"largest reachable rate is {reachable:.4f}"):
        sc.prune(model, reachable + 0.05, method=method)


def test_layerwise_magnitude_prunes_each_layer_alike():
    model = small_model("vgg16_bn")
    pruned = sc.prune(model, 0.6, method="magnitude-layerwise")
    sparsity = [1 - torch.count_nonzero(w).item() / w.numel() for w in _weights(pruned)]
    s = sparsity[len(sparsity) // 2]
    assert all(abs(x - s) <= 1.0 / w.numel() + 1e-12 for x, w in zip(sparsity, _weights(pruned), strict=True))
    global_sparsity = [1 - torch.count_nonzero(w).item() / w.numel() for w in _weights(sc.prune(model, 0.6))]
    assert max(global_sparsity) - min(global_sparsity) > 0.05  # the global method does allocate differently


# ---------------------------------------------------------------------------------------------------------
# Filter pruning: physically smaller, consistent across residual connections


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet56"])
def test_filter_pruned_resnets_add_matching_tensors(name):
    model, pruned = pruned_small(name, "filter", 0.5)
    added = []

    def record(block, args, out):
        (x,) = args
        main = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
        added.append((main.shape, block.shortcut(x).shape, out.shape))

    blocks = [m for m in pruned.modules() if type(m).__name__ == "BasicBlock"]
    hooks = [b.register_forward_hook(record) for b in blocks]
    with torch.no_grad():
        y = pruned(example(name))
    for h in hooks:
        h.remove()
    assert y.shape == (2, 10) and len(added) == len(blocks) > 0
    assert all(main == short == out for main, short, out in added)
    for b in blocks:
        assert b.conv1.out_channels == b.bn1.num_features == b.conv2.in_channels
        assert b.conv2.out_channels == b.bn2.num_features
    narrower = [
        (a.out_channels, b.out_channels)
        for a, b in zip(model.modules(), pruned.modules(), strict=True)
        if isinstance(a, nn.Conv2d)
    ]
    assert all(new < old for old, new in narrower)
    assert pruned.fc.out_features == 10
    assert sc.count_params(pruned, nonzero=True) == sc.count_params(pruned)  # removed, not zeroed


def test_filter_exclude_keeps_output_channels():
    model = small_model("resnet20")
    pruned = sc.prune(model, 0.4, method="filter", exclude=["layers.1.*.conv1"])
    for i in range(3):
        assert pruned.layers[1][i].conv1.out_channels == model.layers[1][i].conv1.out_channels
    assert pruned.layers[2][0].conv1.out_channels < model.layers[2][0].conv1.out_channels


def test_filter_with_depthwise_and_grouped_convs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),  # depthwise: pruned with conv 0
        nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),  # grouped: its channels are left alone
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )  # fmt: skip
    pruned = sc.prune(model, 0.3, method="filter", input_shape=(1, 3, 8, 8))
    assert pruned[0].out_channels == pruned[3].in_channels == pruned[3].out_channels == pruned[3].groups < 16
    assert pruned[8].in_channels == pruned[8].out_channels == 32 and pruned[8].groups == 4
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 5)


class GroupNormNet(nn.Module):
    """conv -> GroupNorm(4) -> conv -> GroupNorm(6), the second added back to the first (one channel group of 48
    channels through both norms: units of lcm(4, 6) = 12), then a 64-channel conv -> GroupNorm(8) -> classifier."""

    def __init__(self):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, 48, 3, padding=1), nn.GroupNorm(4, 48)
        self.conv2, self.norm2 = nn.Conv2d(48, 48, 3, padding=1), nn.GroupNorm(6, 48)
        self.conv3, self.norm3 = nn.Conv2d(48, 64, 3, padding=1), nn.GroupNorm(8, 64)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        x = torch.relu(self.norm1(self.conv1(x)))
        x = x + torch.relu(self.norm2(self.conv2(x)))
        x = torch.relu(self.norm3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Which rows of ``before`` (output channels of a weight or bias) survive in ``after`` (matched exactly)."""
    flat = before.flatten(1)
    return [int((flat == row).all(1).nonzero()[0]) for row in after.flatten(1)]


@settings(max_examples=15, deadline=None)
@given(rate=st.floats(0.05, 0.9), seed=st.integers(0, 3))
def test_filter_pruning_keeps_group_norm_groups_whole(rate, seed):
    torch.manual_seed(seed)
    model = GroupNormNet().eval()
    reachable = sc.max_prune_rate(model, "filter", input_shape=(1, 3, 8, 8))
    pruned = sc.prune(model, min(rate, reachable), method="filter", input_shape=(1, 3, 8, 8))
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    for old, new in ((model.norm1, pruned.norm1), (model.norm2, pruned.norm2), (model.norm3, pruned.norm3)):
        assert new.num_groups == old.num_groups and new.num_channels % new.num_groups == 0
    assert pruned.norm1.num_channels % 12 == 0 and pruned.norm1.num_channels == pruned.norm2.num_channels
    for conv, norm in (("conv1", "norm1"), ("conv3", "norm3")):  # each norm group keeps its own channels
        kept = _kept_rows(getattr(model, conv).bias[:, None], getattr(pruned, conv).bias[:, None])
        old_size = getattr(model, norm).num_channels // getattr(model, norm).num_groups
        new_size = getattr(pruned, norm).num_channels // getattr(pruned, norm).num_groups
        assert kept == sorted(kept) and [k // old_size for k in kept] == [i // new_size for i in range(len(kept))]
    assert pruned.sc_compression.params_after == sc.count_params(pruned)


def test_filter_pruning_with_group_norm_drops_the_least_important_channels_of_each_norm_group():
    model = nn.Sequential(nn.Conv2d(2, 8, 1, bias=False), nn.GroupNorm(2, 8), nn.Conv2d(8, 3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 9, 2, 8, 7, 3, 6, 4]).view(8, 1, 1, 1).expand(8, 2, 1, 1))
        model[2].weight.fill_(1.0)
    pruned = sc.prune(model, 0.4, method="filter", input_shape=(1, 2, 4, 4))
    assert _kept_rows(model[0].weight, pruned[0].weight) == [1, 3, 4, 6]  # 9, 8 of the first group; 7, 6 of the next


def test_filter_report_table():
    model, pruned = pruned_small("resnet20", "filter", 0.5)
    report = sc.prune_report(model, pruned, "filter", input_shape=(1, 3, 32, 32))
    assert not report.nonzero and report.flops_after < report.flops_before
    assert {r.status for r in report.rows} == {"pruned"}
    assert "filter" in str(report) and "total params" in str(report)
    mag = sc.prune_report(model, pruned_small("resnet20", "magnitude", 0.5)[1], "magnitude")
    assert mag.nonzero and "non-zero params" in str(mag)


# ---------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan, "0.5", None, True])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        sc.prune(small_model("cnn"), rate)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown pruning method 'l2'.*'filter'"):
        sc.prune(small_model("cnn"), 0.5, method="l2")
    with pytest.raises(ValueError, match="unknown pruning method"):
        sc.prune_report(small_model("cnn"), small_model("cnn"), "svd")


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise", "filter"])
def test_out_of_reach_rate_names_the_largest_reachable(method):
    model = small_model("cnn")
    exclude = ["0", "3"]  # leave the two big convs alone: high rates become unreachable
    reachable = sc.max_prune_rate(model, method, exclude=exclude)
    assert 0.3 < reachable < 0.9
    with pytest.raises(ValueError, match=f"largest reachable rate is {reachable:.4f}"):
        sc.prune(model, 0.95, method=method, exclude=exclude)
    pruned = sc.prune(model, reachable, method=method, exclude=exclude)
    assert achieved_rate(model, pruned, method) == pytest.approx(reachable, abs=1e-9)


def test_bad_exclude_and_model_and_input_shape():
    model = small_model("cnn")
    with pytest.raises(ValueError, match=r"exclude entry 'backbone\.\*' matches no layer"):
        sc.prune(model, 0.5, exclude=["backbone.*"])
    with pytest.raises(ValueError, match="name patterns"):
        sc.prune(model, 0.5, exclude=[3])
    with pytest.raises(ValueError, match="torch.nn.Module"):
        sc.prune({"weight": torch.ones(2)}, 0.5)
    with pytest.raises(ValueError, match="input_shape"):
        sc.prune(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), 0.3, method="filter")
    with pytest.raises(ValueError, match="input_shape"):
        sc.prune(small_model("cnn"), 0.3, method="filter", input_shape=(0, 1, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# Persistence: save/load round trip and ONNX export of pruned models


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "vgg16_bn"])
def test_filter_pruned_save_load_round_trip(name, tmp_path):
    model, pruned = pruned_small(name, "filter", 0.5)
    loaded = sc.load(sc.save(pruned, tmp_path / f"{name}.safetensors"))
    assert loaded.sc_arch == model.sc_arch
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    x = example(name)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))


def test_magnitude_pruned_save_load_round_trip(tmp_path):
    _, pruned = pruned_small("resnet20", "magnitude", 0.5)
    loaded = sc.load(sc.save(pruned, tmp_path / "sparse.safetensors"))
    assert sc.count_params(loaded, nonzero=True) == sc.count_params(pruned, nonzero=True)
    reference = pruned.state_dict()
    assert list(loaded.state_dict()) == list(reference)
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())


@pytest.mark.parametrize(
    "name", ["resnet20", *(pytest.param(n, marks=pytest.mark.slow) for n in ("resnet18", "vgg16_bn"))]
)
def test_filter_pruned_onnx_export(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, pruned = pruned_small(name, "filter", 0.5)
    path = sc.export_onnx(pruned, tmp_path / f"{name}.onnx", (1, *sc.models.model_input_shape(name)))
    x = example(name, batch=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = pruned(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))

"""Linear-like layers (smoothcompress.layers), nn.MultiheadAttention, tied weights, and compress(inplace=True)."""

import copy

import pytest
import torch
from torch import nn

import smoothcompress as sc
from smoothcompress.factorized import FactorizedLinear
from smoothcompress.layers import (
    LinearSpec,
    is_weight_layer,
    linear_spec,
    linear_weight,
    register_linear_like,
    tied_weights,
)


class TransposedProj(nn.Module):
    """A Linear stored the other way round, ``y = x @ W + b`` with ``W`` of shape (in, out), like Conv1D."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.b = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.w + self.b


class DeclaredProj(TransposedProj):
    sc_linear = LinearSpec(transposed=True, weight="w", bias="b")


def mlp(layer: type, width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(layer(16, width), nn.ReLU(), layer(width, width), nn.ReLU(), nn.Linear(width, 4)).eval()


X = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))


def test_unregistered_module_is_skipped():
    plan = sc.plan_compression(mlp(TransposedProj), rate=None, ranks={"4": 2})
    assert set(plan.layers) == {"4"}


@pytest.mark.parametrize("how", ["class", "name", "attribute"])
def test_registered_or_declared_module_is_factorized(how, monkeypatch):
    from smoothcompress import layers

    monkeypatch.setattr(layers, "_REGISTRY", dict(layers._REGISTRY))
    monkeypatch.setattr(layers, "_BY_CLASS", {})
    cls = DeclaredProj if how == "attribute" else TransposedProj
    if how == "class":
        register_linear_like(TransposedProj, transposed=True, weight="w", bias="b")
    elif how == "name":
        register_linear_like(f"{__name__}.TransposedProj", transposed=True, weight="w", bias="b")
    model = mlp(cls)
    assert linear_spec(model[0]) == LinearSpec(True, "w", "b")
    assert linear_weight(model[0]).shape == (32, 16)
    small = sc.compress(model, 0.4)
    assert isinstance(small[2], FactorizedLinear) and 0.4 <= small.sc_compression.rate_achieved <= 0.42
    h = torch.randn(5, 32)
    torch.testing.assert_close(FactorizedLinear.from_dense(model[2], 32)(h), model[2](h), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(sc.compress(model, 0.0)(X), model(X))
    assert set(sc.Smoothness("first", 1.0).layers(model)) == {"0", "2", "4"}


def test_register_rejects_bad_keys():
    with pytest.raises(ValueError, match="nn.Module subclass"):
        register_linear_like(int)
    with pytest.raises(ValueError, match="ClassName"):
        register_linear_like("Conv1D")


def test_layers_whose_weight_torch_reads_directly_are_skipped_with_the_reason():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(16, 4, dim_feedforward=64, batch_first=True), nn.Linear(16, 64))
    model.eval()
    plan = sc.plan_compression(model, 0.1)
    assert "in_proj_weight" in plan.notes["0.self_attn"]
    assert "reads out_proj.weight directly" in plan.notes["0.self_attn.out_proj"]
    assert "reads linear1.weight directly" in plan.notes["0.linear1"]  # the eval-mode fast path
    assert set(plan.layers) == {"1"}
    small = sc.compress(model, 0.1)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert small(x).shape == (2, 7, 64)
        torch.testing.assert_close(sc.compress(model, 0.0)(x), model(x))


def test_standalone_out_proj_class_is_factorized():
    model = nn.Sequential(nn.modules.linear.NonDynamicallyQuantizableLinear(32, 32), nn.Linear(32, 4))
    assert "0" in sc.plan_compression(model, rate=None, ranks={"0": 4}).ranks()


def test_tied_weight_is_skipped():
    torch.manual_seed(0)
    emb, head = nn.Embedding(50, 16), nn.Linear(16, 50, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, nn.Linear(16, 16), head)
    plan = sc.plan_compression(model, rate=None, ranks={"1": 2})
    assert plan.notes["2"].startswith("skipped: weight tied to 0")
    assert set(plan.layers) == {"1"}


def test_tied_weights_names_every_owner():
    emb, head, shared = nn.Embedding(50, 16), nn.Linear(16, 50, bias=False), nn.Linear(16, 16)
    head.weight = emb.weight
    proj = DeclaredProj(16, 16)
    other = nn.Linear(16, 16)
    other.weight = proj.w  # tied under another parameter name
    model = nn.Sequential(emb, shared, nn.Sequential(shared), head, proj, other, nn.Linear(16, 4))
    assert tied_weights(model) == {"0": ["3"], "1": ["2.0"], "2.0": ["1"], "3": ["0"], "4": ["5"], "5": ["4"]}
    assert tied_weights(mlp(nn.Linear)) == {}


def test_weight_layers_are_what_a_report_lists():
    model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4), nn.MultiheadAttention(4, 2), DeclaredProj(4, 4))
    assert [n for n, m in model.named_modules() if is_weight_layer(n, m)] == ["0", "2", "2.out_proj", "3"]
    assert not is_weight_layer("", nn.Linear(2, 2))  # the root is never a layer


@pytest.mark.parametrize("kwargs", [{"rate": 0.5}, {"rate": 0.6, "scheme": "auto"}, {"rate": 0.0}])
def test_inplace_gives_the_same_model_as_the_copy(kwargs):
    torch.manual_seed(0)
    model = sc.create_model("resnet20", width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    copied = sc.compress(model, **kwargs)
    original = copy.deepcopy(model)
    same = sc.compress(model, **kwargs, inplace=True)
    assert same is model
    assert same.sc_compression == copied.sc_compression
    assert [(n, type(m)) for n, m in same.named_modules()] == [(n, type(m)) for n, m in copied.named_modules()]
    for (ka, a), (kb, b) in zip(same.state_dict().items(), copied.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(same(x), copied(x))
    if kwargs["rate"] == 0.0:
        with torch.no_grad():
            assert torch.equal(same(x), original(x))


def test_inplace_refusal_leaves_the_model_unchanged():
    model = mlp(nn.Linear)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError):
        sc.compress(model, 0.99, inplace=True)
    assert all(isinstance(model[i], nn.Linear) for i in (0, 2, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

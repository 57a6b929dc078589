"""Hugging Face models from tiny configs (random init, nothing downloaded): GPT-2 (Conv1D projections), BERT, ViT.

Each goes through compress (rate reached, full rank exact), save/load with a skeleton, Smoothness, and (BERT)
ONNX export. Skipped when ``transformers`` is not installed (``pip install -e '.[dev]'`` installs it).
"""

import numpy as np
import pytest
import torch
from torch import nn

import smoothcompress as sc
from smoothcompress.factorized import FactorizedLinear
from smoothcompress.layers import is_linear_like, linear_weight
from smoothcompress.selection import set_submodule

transformers = pytest.importorskip("transformers", reason="the tests of Hugging Face models need `transformers`")
transformers.logging.set_verbosity_error()
from transformers.pytorch_utils import Conv1D  # noqa: E402

SEQ = 12
VOCAB = 64


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=48, n_head=4, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=32, num_labels=3, return_dict=False,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


def vit() -> nn.Module:
    cfg = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, num_labels=5
    )  # fmt: skip
    return transformers.ViTForImageClassification(cfg)


BUILDERS = {"gpt2": gpt2, "bert": bert, "vit": vit}
EXCLUDE = {"vit": "*patch_embeddings.projection"}  # ViTModel.forward reads projection.weight.dtype itself


def example(name: str, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if name == "vit":
        return torch.randn(batch, 3, 16, 16, generator=gen)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen)


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name]().eval()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)[0]


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request):
    return request.param, build(request.param)


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_compress_reaches_the_rate(case, rate):
    name, model = case
    small = sc.compress(model, rate, exclude=EXCLUDE.get(name, ()))
    record = small.sc_compression
    assert rate <= record.rate_achieved <= rate + 0.02
    assert sc.count_params(small) == record.params_after
    assert 1 - sc.count_params(small) / sc.count_params(model) == pytest.approx(record.rate_achieved)
    out = run(small, example(name))
    assert out.shape == run(model, example(name)).shape and torch.isfinite(out).all()
    assert any(isinstance(m, FactorizedLinear) for m in small.modules())


def test_gpt2_conv1d_layers_are_eligible_and_the_tied_head_is_skipped():
    model = build("gpt2")
    plan = sc.plan_compression(model, 0.5)
    conv1d = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert conv1d and set(conv1d) <= set(plan.layers)
    assert "tied to transformer.wte" in plan.notes["lm_head"]  # factorizing one copy would add parameters
    small = sc.compress(model, 0.5)
    assert small.lm_head.weight is small.transformer.wte.weight


@pytest.mark.parametrize("method", ["magnitude", "magnitude-layerwise"])
def test_gpt2_magnitude_pruning_zeroes_the_conv1d_weights_and_skips_the_tied_head(method):
    model = build("gpt2")
    pruned = sc.prune(model, 0.2, method=method)
    record = pruned.sc_compression
    conv1d = {n: m for n, m in pruned.named_modules() if isinstance(m, Conv1D)}
    zeroed = sum(int((m.weight == 0).sum()) for m in conv1d.values())
    assert record.rate_achieved == pytest.approx(0.2, abs=0.01)
    assert zeroed == sc.count_params(model, nonzero=True) - record.params_after  # every zero made is in a Conv1D
    assert all((m.weight == 0).any() for m in conv1d.values())
    assert torch.equal(pruned.transformer.wte.weight, model.transformer.wte.weight)
    assert pruned.lm_head.weight is pruned.transformer.wte.weight  # still tied
    assert record.notes["lm_head"].startswith("skipped: weight tied to transformer.wte")
    assert record.notes["transformer.wte"].startswith("skipped: embedding table")
    assert sc.max_prune_rate(model, method) < 1.0 - (VOCAB + 32) * 48 / sc.count_params(model) + 1e-9


def test_a_layer_read_directly_fails_with_the_fix_in_the_message():
    small = sc.compress(build("vit"), 0.5)
    with pytest.raises(AttributeError, match=r"has no 'weight'.*exclude="):
        run(small, example("vit"))


def test_rate_zero_is_an_exact_copy(case):
    name, model = case
    same = sc.compress(model, 0.0)
    assert torch.equal(run(same, example(name)), run(model, example(name)))


def test_full_rank_factors_keep_the_function(case):
    name, model = case
    full = sc.compress(model, 0.0)
    layers = {n: m for n, m in full.named_modules() if is_linear_like(m)}
    assert layers
    for n, m in layers.items():
        set_submodule(full, n, FactorizedLinear.from_dense(m, min(linear_weight(m).shape)))
    ref = run(model, example(name))
    torch.testing.assert_close(run(full, example(name)), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_conv1d_factors_compute_the_same_function():
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs: weight (16, 24)
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 5, 16)
    full = FactorizedLinear.from_dense(conv, 16)
    torch.testing.assert_close(full(x), conv(x), rtol=1e-5, atol=1e-5)
    low = FactorizedLinear.from_dense(conv, 4)
    assert low.dense_weight().shape == (24, 16)
    torch.testing.assert_close(low(x), x @ low.dense_weight().T + conv.bias, rtol=1e-5, atol=1e-5)


def test_save_then_load_into_a_skeleton(case, tmp_path):
    name, model = case
    small = sc.compress(model, 0.5, exclude=EXCLUDE.get(name, ()))
    path = sc.save(small, tmp_path / f"{name}.safetensors")
    loaded = sc.load(path, model=build(name))
    assert torch.equal(run(loaded, example(name)), run(small, example(name)))
    assert loaded.sc_compression == small.sc_compression
    assert sc.count_params(loaded) == sc.count_params(small)


@pytest.mark.parametrize("kind", ["nuclear", "first", "second"])
def test_smoothness_is_a_finite_differentiable_scalar(case, kind):
    name, model = case
    reg = sc.Smoothness(kind, 1e-3)
    assert set(reg.layers(model)) >= {n for n, m in model.named_modules() if is_linear_like(m)}
    value = reg(model)
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    model.zero_grad()
    value.backward()
    grads = [m.weight.grad for m in model.modules() if isinstance(m, (Conv1D, nn.Linear))]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_conv1d_is_penalised_as_its_out_by_in_matrix():
    """A Conv1D and the nn.Linear with the transposed weight get the same penalty, on every axis choice."""
    torch.manual_seed(0)
    conv = Conv1D(12, 8)
    linear = nn.Linear(8, 12)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
    for kind, axes in [("first", ("out",)), ("second", ("in",)), ("nuclear", ("out", "in"))]:
        a = sc.Smoothness(kind, 1.0, axes=axes).unweighted(nn.Sequential(conv))
        b = sc.Smoothness(kind, 1.0, axes=axes).unweighted(nn.Sequential(linear))
        torch.testing.assert_close(a, b)


def test_proximal_step_on_conv1d_matches_linear():
    torch.manual_seed(0)
    conv = Conv1D(12, 8)
    linear = nn.Linear(8, 12)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
    for layer in (conv, linear):
        sc.Smoothness("nuclear", 0.5, proximal=True).after_step(nn.Sequential(layer), lr=0.5)
    torch.testing.assert_close(conv.weight.T, linear.weight)


def test_bert_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    small = sc.compress(build("bert"), 0.5)
    path = sc.export_onnx(small, tmp_path / "bert.onnx", example_input=example("bert", batch=1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = example("bert", batch=3)  # exported with batch 1, run with batch 3
    got = session.run(None, {"input": ids.numpy()})[0]
    ref = run(small, ids).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


# ---------------------------------------------------------------------------------------------------------
# Language models take int64 token ids and dicts of them: FLOPs, reports, FLOPs budgets, calibration, svd-seq.
# Each call failed before (a zero float input for an embedding, or calibration refusing non-float batches).


def lm() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


def ids(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def gpt():
    return lm()


def test_count_flops_and_report_on_token_ids(gpt):
    flops = sc.count_flops(gpt, example=ids())
    assert flops > 0 and sc.count_flops(gpt, example={"input_ids": ids()}) == flops
    small = sc.compress(gpt, 0.3)
    rep = sc.compress_report(gpt, small, example=ids())
    assert 0 < rep.flops_after < rep.flops_before == flops and "total FLOPs" in str(rep)


def test_flops_budget_on_token_ids(gpt):
    small = sc.compress(gpt, flops=0.7, example=ids())
    record = small.sc_compression
    assert record.flops_achieved <= 0.7 and record.details["flops"]["input_shape"] == [2, SEQ]
    assert small(ids()).logits.shape == (2, SEQ, 128)
    bert_small = sc.compress(build("bert"), flops=0.7, example=example("bert"))
    assert bert_small.sc_compression.flops_achieved <= 0.7


@pytest.mark.filterwarnings("ignore:.*fewer input vectors than their input dimension")
def test_calibrate_on_token_ids_and_dicts(gpt):
    cal = sc.calibrate(gpt, [ids(seed=1), ids(seed=2)], images=4)
    assert cal.images == 4 and "transformer.h.0.attn.c_attn" in cal.moments
    batch = {"input_ids": example("bert"), "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}
    cal = sc.calibrate(build("bert"), [batch, batch], images=4)
    assert cal.images == 4 and cal.split == "given"


@pytest.mark.filterwarnings("ignore:.*fewer input vectors than their input dimension")
def test_sequential_methods_on_token_ids(gpt):
    data = [ids(seed=s) for s in range(3)]
    small = sc.get_method("svd-seq").apply(gpt, 0.3, data=data, images=6)
    record = small.sc_compression
    assert record.details["reconstruction"]["images"] == 6 and record.rate_achieved >= 0.3
    assert torch.isfinite(small(ids()).logits).all()
    batch = {"input_ids": example("bert"), "attention_mask": torch.ones(2, SEQ, dtype=torch.long)}
    small = sc.get_method("svd-data").apply(build("bert"), 0.3, data=[batch], images=2)
    assert small.sc_compression.details["calibration"]["images"] == 2


def test_bert_exports_to_onnx_with_keyword_inputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = build("bert")
    x, mask = example("bert"), torch.ones(2, SEQ, dtype=torch.long)
    path = sc.export_onnx(model, tmp_path / "bert.onnx", example_input={"input_ids": x, "attention_mask": mask})
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask"]
    got = session.run(None, {"input_ids": x.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, run(model, x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", [gpt2, bert])
def test_filter_pruning_of_attention_models_is_refused_in_one_line(build):
    """Torch-Pruning cannot narrow attention heads consistently nor trace tuple outputs: one line, not a traceback."""
    model = build()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with pytest.raises(sc.ConfigError, match="filter pruning cannot narrow") as e:
        sc.prune(model, 0.2, method="filter", example=ids)
    assert "\n" not in str(e.value)

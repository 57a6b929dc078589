"""One example-input concept (smoothcompress.inputs): every accepted form runs the model as a direct call does, and a
wrong input is a one-line error naming its dtype and shape."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import smoothcompress as sc
from smoothcompress.calibration import CALIBRATION_IMAGES, calibration_batches, run_batches
from smoothcompress.errors import ConfigError
from smoothcompress.inputs import ExampleInput, as_batch, as_example, first_tensor
from smoothcompress.layers import is_linear, is_linear_like
from smoothcompress.regularize import LinearType


class TwoInputs(nn.Module):
    """Token ids (B, T) int64 and a mask (B, T): a Linear on the masked mean of the embeddings, (B, 3)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None].to(h.dtype)
        return self.fc(h.mean(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return TwoInputs().eval()


@settings(max_examples=25, deadline=None)
@given(
    form=st.sampled_from(["tensor", "tuple", "list", "dict", "callable", "example"]),
    batch=st.integers(1, 4),
    seq=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_run_is_the_direct_call(form, batch, seq, seed):
    model = _model()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (batch, seq), generator=gen)
    mask = torch.randint(0, 2, (batch, seq), generator=gen)
    direct = model(ids) if form == "tensor" else model(ids, mask)
    value = {
        "tensor": ids,
        "tuple": (ids, mask),
        "list": [ids, mask],
        "dict": {"input_ids": ids, "attention_mask": mask},
        "callable": lambda m: m(ids, attention_mask=mask),
        "example": ExampleInput((ids,), {"attention_mask": mask}),
    }[form]
    ex = as_example(model, value)
    out = ex.run(model)
    assert torch.equal(out, direct) and not out.requires_grad
    assert ex.batch_size == (None if form == "callable" else batch)
    assert ex.to("cpu").run(model).equal(direct)
    if form != "callable":
        assert ex.head(1).batch_size == 1 and "int64" in ex.describe()
        torch.testing.assert_close(ex.head(1).run(model), direct[:1])


def test_zero_input_from_a_shape_or_the_registry():
    mlp = sc.create_model("mlp")
    ex = as_example(mlp)
    assert ex.shape == sc.models.default_input_shape(mlp) and ex.args[0].dtype == torch.float32
    assert as_example(mlp.double(), input_shape=(2, 1, 28, 28)).args[0].dtype == torch.float64
    with pytest.raises(ConfigError, match="example=") as e:
        as_example(nn.Linear(3, 2))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"int64\[2, 4\], but input_shape is \(2, 5\)"):
        as_example(_model(), torch.zeros(2, 4, dtype=torch.long), input_shape=(2, 5))
    with pytest.raises(ConfigError, match="got str"):
        as_example(_model(), "ids")


def test_count_flops_on_every_form():
    model = _model()
    ids, mask = torch.randint(0, 16, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    want = sc.count_flops(model, example=ids)
    assert want == 2 * 2 * 8 * 3  # the one Linear: 2 FLOPs per multiply-add
    assert sc.count_flops(model, example=(ids, mask)) == want
    assert sc.count_flops(model, example={"input_ids": ids, "attention_mask": mask}) == want
    assert sc.count_flops(model, example=lambda m: m(ids)) == want


def test_a_wrong_example_is_one_line_naming_dtype_and_shape():
    model = _model()
    with pytest.raises(ValueError, match=r"calibration inputs float32\[2, 5\] do not fit the model") as e:
        sc.calibrate(model, [torch.randn(2, 5)], images=2)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"input_ids=float32\[2, 5\] do not fit the model") as e:
        run_batches(model, [{"input_ids": torch.randn(2, 5)}])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"got \(str\)"):
        as_batch([("a",)])


def test_calibration_batches_keep_their_form_and_count_rows():
    ids = torch.randint(0, 16, (5, 4))
    mask = torch.ones(5, 4, dtype=torch.long)
    got = list(calibration_batches([(ids, torch.zeros(5)), {"input_ids": ids, "attention_mask": mask}], images=7))
    assert torch.equal(got[0], ids) and set(got[1]) == {"input_ids", "attention_mask"}
    assert got[1]["input_ids"].shape == (2, 4) and got[1]["attention_mask"].shape == (2, 4)
    assert [b.shape[0] for b in calibration_batches(ids, images=3, batch_size=2)] == [2, 1]
    model = _model()
    cal = sc.calibrate(model, [{"input_ids": ids, "attention_mask": mask}, ids], images=10)
    assert cal.images == 10 and set(cal.moments) == {"fc"}
    assert first_tensor({"a": (1, torch.ones(2))}).shape == (2,)


def test_one_linear_definition():
    class Sub(nn.Linear):
        pass

    lazy = nn.LazyLinear(3)
    assert is_linear(Sub(2, 3)) and not is_linear_like(Sub(2, 3))  # read and zeroed, never replaced
    assert is_linear(nn.Linear(2, 3)) and not is_linear(lazy) and not is_linear(nn.Conv2d(1, 1, 1))
    assert LinearType().matches(Sub(2, 3)) and not LinearType().matches(lazy)
    assert CALIBRATION_IMAGES == sc.study.experiment.CALIBRATION_IMAGES == 2048
    assert sc.get_method("svd-data").apply.__kwdefaults__["images"] == CALIBRATION_IMAGES


def test_filter_pruning_takes_token_ids():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(16, 8), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))
    ids = torch.randint(0, 16, (2, 4))
    small = sc.prune(model, 0.3, "filter", example=ids)
    assert small(ids).shape == (2, 3) and small[2].out_features < 24
    assert sc.max_prune_rate(model, "filter", example={"input": ids}) > 0.3
    rep = sc.prune_report(model, small, "filter", example=(ids,))
    assert rep.flops_after < rep.flops_before


# ---------------------------------------------------------------------------------------------------------
# The input card of a trained model


def _digits_like(classes: int = 10, channels: int = 1, shift: float = 0.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, channels, 8, 8), generator=g, dtype=torch.uint8)
    return sc.Dataset(
        name=f"toy{classes}", x_train=x, y_train=torch.arange(40) % classes, x_test=x[:8],
        y_test=torch.arange(8) % classes,
        classes=[str(i) for i in range(classes)], mean=(0.5 + shift,) * channels, std=(0.25,) * channels,
        sha256="0" * 64, augment=False,
    )  # fmt: skip


def test_the_card_travels_with_the_model_file(tmp_path):
    from smoothcompress.inputs import record_input

    model = sc.create_model("cnn", num_classes=10, width=8)
    card = record_input(model, _digits_like())
    assert card["shape"] == [1, 8, 8] and card["num_classes"] == 10 and card["dataset"] == "toy10"
    loaded = sc.load(sc.save(model, tmp_path / "m.safetensors"))
    assert loaded.sc_input == card
    assert sc.load(sc.save(sc.compress(loaded, 0.5), tmp_path / "c.safetensors")).sc_input == card


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (lambda: _digits_like(classes=3), "with 10 classes, toy3 has 3"),
        (lambda: _digits_like(shift=0.3), "normalised with mean"),
    ],
)
def test_evaluate_refuses_data_the_card_does_not_fit(data, match):
    from smoothcompress.inputs import record_input

    model = sc.create_model("cnn", num_classes=10, width=8)
    record_input(model, _digits_like())
    with pytest.raises(sc.ConfigError, match=match) as e:
        sc.evaluate(model, data())
    assert "\n" not in str(e.value)
    assert 0 <= sc.evaluate(model, _digits_like()) <= 1  # the data it was trained on passes


def test_a_trained_model_records_its_input(tmp_path):
    from smoothcompress.study.training import TrainConfig, run

    result = run(TrainConfig(dataset="digits", model="mlp", width=16, epochs=1, out=str(tmp_path / "r")))
    card = sc.load(result.out_dir / "model.safetensors").sc_input
    assert card["dataset"] == "digits" and card["num_classes"] == 10 and card["shape"] == [1, 8, 8]

"""Calibration data: input moments (calibrate), whitened truncation, BatchNorm recalibration."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import smoothcompress as sc
from smoothcompress.calibration import available_inputs, calibration_batches, describe_source, sample_patches
from smoothcompress.factorized import factorize_weight, matricize


def _cnn(seed: int = 0, c: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * c),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * c * 4 * 4, 10),
    ).eval()


def _tiny_dataset(n_train: int = 96, n_test: int = 16) -> sc.Dataset:
    g = torch.Generator().manual_seed(0)
    return sc.Dataset(
        name="tiny",
        x_train=torch.randint(0, 256, (n_train, 3, 8, 8), generator=g, dtype=torch.uint8),
        y_train=torch.randint(0, 10, (n_train,), generator=g),
        x_test=torch.randint(0, 256, (n_test, 3, 8, 8), generator=g, dtype=torch.uint8),
        y_test=torch.randint(0, 10, (n_test,), generator=g),
        classes=[str(i) for i in range(10)],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        sha256="0" * 64,
        augment=True,
    )


# ---------------------------------------------------------------------------------------------------------
# calibrate


def test_moments_match_unfold_when_every_position_is_used():
    model = _cnn()
    x = torch.randn(8, 3, 8, 8)
    with pytest.warns(UserWarning, match="fewer input vectors"):  # 8 images for the Linear's 192 inputs
        cal = sc.calibrate(model, x, images=8, batch_size=3, samples=10**6)
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27).double()
    torch.testing.assert_close(cal.moments["0"], patches.T @ patches / patches.shape[0], rtol=1e-5, atol=1e-6)
    feats = nn.Sequential(*model[:7])(x).double()
    torch.testing.assert_close(cal.moments["7"], feats.T @ feats / 8, rtol=1e-5, atol=1e-6)
    assert cal.samples["0"] == 8 * 64 and cal.samples["7"] == 8
    assert cal.images == 8 and cal.split == "given"


def test_calibrate_is_deterministic_and_subsamples():
    model = _cnn()
    x = torch.randn(16, 3, 8, 8)
    a = sc.calibrate(model, x, images=16, samples=100, layers=["0", "3"])
    b = sc.calibrate(model, x, images=16, samples=100, layers=["0", "3"])
    assert a.samples["0"] == 100 < 16 * 64 and set(a.moments) == {"0", "3"}
    for name in a.moments:
        assert torch.equal(a.moments[name], b.moments[name])


def test_calibrate_restores_mode_and_changes_nothing():
    model = _cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sc.calibrate(model, torch.randn(200, 3, 8, 8), images=200)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_spatial_moment_averages_the_kernel_columns():
    model = _cnn()
    cal = sc.calibrate(model, torch.randn(200, 3, 8, 8), images=200, damping=0.0)
    c = cal.moments["0"].reshape(3, 3, 3, 3, 3, 3)
    expect = sum(c[:, :, j, :, :, j] for j in range(3)).reshape(9, 9) / 3
    torch.testing.assert_close(cal.moment("0", "spatial"), expect)


class _GuardedDataset(sc.Dataset):
    """A dataset whose test split raises on any access after construction."""

    guard = False

    def __getattribute__(self, name):
        if name in ("x_test", "y_test") and object.__getattribute__(self, "guard"):
            raise AssertionError("calibration read the test split")
        return object.__getattribute__(self, name)


def test_calibration_never_reads_the_test_split():
    ds = _tiny_dataset()
    guarded = _GuardedDataset(**{k: getattr(ds, k) for k in ds.__dataclass_fields__})
    guarded.guard = True
    model = _cnn()
    cal = sc.calibrate(model, guarded, images=32, batch_size=8)
    assert cal.split == "train" and cal.images == 32
    sc.recalibrate_bn(model, guarded, images=32, batch_size=8)


def test_dataset_batches_are_normalised_training_images():
    ds = _tiny_dataset()
    xs = torch.cat(list(calibration_batches(ds, images=40, batch_size=16)))
    assert xs.shape == (40, 3, 8, 8)
    raw = (ds.x_train.float() / 255 - 0.5) / 0.25
    # every calibration image is one of the training images
    dist = torch.cdist(xs.reshape(40, -1), raw.reshape(len(raw), -1), compute_mode="donot_use_mm_for_euclid_dist")
    dist = dist.min(1).values
    assert float(dist.max()) < 1e-3


def test_wrong_shape_is_one_line_error():
    with pytest.raises(ValueError, match=r"calibration inputs float32\[4, 3, 5, 5\] do not fit the model") as e:
        sc.calibrate(_cnn(), torch.randn(4, 3, 5, 5), images=4)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"uint8\[4, 3, 8, 8\] do not fit the model") as e:
        sc.calibrate(_cnn(), torch.zeros(4, 3, 8, 8, dtype=torch.uint8), images=4)
    assert "\n" not in str(e.value)


def test_too_few_images_warns_how_many_are_needed():
    with pytest.warns(UserWarning, match=r"Pass images >= 192"):
        sc.calibrate(_cnn(), torch.randn(8, 3, 8, 8), images=8)


def test_asking_for_more_images_than_the_source_has_spreads_the_samples_over_those_it_has():
    model, data = _cnn(), _tiny_dataset(n_train=96)
    asked = sc.calibrate(model, data, images=96, samples=300, layers=["7"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer 7 (d=192) is short in both: 96 images give 96 vectors
        too_many = sc.calibrate(model, data, images=10**6, samples=300, layers=["7"])
    assert too_many.images == asked.images == 96 and too_many.samples == asked.samples
    torch.testing.assert_close(too_many.moments["7"], asked.moments["7"])


@pytest.mark.parametrize("form", ["list", "dataloader", "dataloader-drop-last", "loader"])
def test_a_loader_or_list_of_batches_spreads_the_samples_over_the_inputs_it_gives(form):
    x = torch.randn(100, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = {
        "list": lambda: [x[i : i + 32] for i in range(0, 100, 32)],
        "dataloader": lambda: DataLoader(TensorDataset(x), batch_size=32),
        "dataloader-drop-last": lambda: DataLoader(TensorDataset(x), batch_size=32, drop_last=True),
        "loader": lambda: sc.Loader(x.mul(40).add(128).clamp(0, 255).to(torch.uint8), torch.zeros(100).long(),
                                    batch_size=32, train=False, mean=[0.5] * 3, std=[0.2] * 3, augment=False,
                                    seed=0, device="cpu"),
    }[form]  # fmt: skip
    expected = 96 if form == "dataloader-drop-last" else 100
    assert available_inputs(batches()) == expected
    model = _cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layer 7 (d=192) is short with about 100 images
        asked = sc.calibrate(model, batches(), images=expected, samples=300, layers=["7"])
        too_many = sc.calibrate(model, batches(), images=10**6, samples=300, layers=["7"])
    assert too_many.images == asked.images == expected and too_many.samples == asked.samples
    torch.testing.assert_close(too_many.moments["7"], asked.moments["7"])


def test_an_iterable_that_cannot_be_counted_is_taken_at_its_word():
    assert available_inputs(iter([torch.zeros(4, 3)])) is None
    assert describe_source(iter([torch.zeros(4, 3)]), 50) == {"images": 50, "split": "given"}


def test_a_source_too_small_for_full_rank_moments_is_said_to_be_so():
    with pytest.warns(UserWarning, match=r"The calibration source has 8 images, fewer than the 192 needed"):
        sc.calibrate(_cnn(), torch.randn(8, 3, 8, 8), images=1000)


def test_calibration_of_another_model_is_refused():
    cal = sc.calibrate(_cnn(c=6), torch.randn(8, 3, 8, 8), images=8, layers=["0"])
    with pytest.raises(ValueError, match="made for another model"):
        sc.compress(_cnn(c=8), rate=0.3, calibration=cal)


# ---------------------------------------------------------------------------------------------------------
# whitened truncation


def _output_error(w: torch.Tensor, w_r: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm((w - w_r) @ x.T))


@settings(max_examples=40, deadline=None)
@given(
    out=st.integers(2, 12),
    inp=st.integers(2, 12),
    n=st.integers(1, 40),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_whitened_truncation_never_loses_more_output_than_plain(out, inp, n, frac, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g, dtype=torch.float64)
    # correlated inputs, sometimes fewer samples than dimensions (a singular moment)
    x = torch.randn(n, inp, generator=g, dtype=torch.float64) @ torch.randn(inp, inp, generator=g, dtype=torch.float64)
    moment = x.T @ x / n
    full = min(out, inp)
    rank = 1 + int(frac * (full - 1))
    plain = factorize_weight(w, rank)
    white = factorize_weight(w, rank, moment=moment)  # undamped: the exact optimum on x
    e_plain = _output_error(w, plain.second @ plain.first, x)
    e_white = _output_error(w, white.second @ white.first, x)
    assert e_white <= e_plain * (1 + 1e-9) + 1e-9
    if rank == full:  # exact at full rank once the moment is positive definite (damped)
        damped = factorize_weight(w, rank, moment=moment + 1e-3 * torch.eye(inp, dtype=torch.float64))
        torch.testing.assert_close(damped.second @ damped.first, w, rtol=1e-7, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(c_in=st.integers(1, 4), c_out=st.integers(2, 6), k=st.sampled_from([1, 3]), seed=st.integers(0, 1000))
def test_whitened_conv_factors_at_full_rank_are_exact(c_in, c_out, k, seed):
    torch.manual_seed(seed)
    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    x = torch.randn(64, c_in * k * k, dtype=torch.float64)
    full = min(c_out, c_in * k * k)
    f = factorize_weight(w, full, moment=x.T @ x / 64)
    torch.testing.assert_close(
        matricize(f.second, "channel") @ f.first.reshape(full, -1), matricize(w, "channel"), rtol=1e-8, atol=1e-8
    )


def test_compress_with_calibration_reaches_rate_and_is_exact_at_full_rank():
    model = _cnn(c=8)
    x = torch.randn(64, 3, 8, 8)
    cal = sc.calibrate(model, x, images=64)
    small = sc.compress(model, rate=0.4, calibration=cal)
    assert sc.count_params(small) <= 0.6 * sc.count_params(model) + 1
    record = small.sc_compression
    assert record.details["calibration"]["images"] == 64 and record.details["calibration"]["split"] == "given"
    plan = sc.plan_compression(model, rate=0.4, calibration=cal)
    assert plan.rate >= 0.4


def test_data_aware_compression_has_smaller_output_error_than_plain():
    model = _cnn(c=8)
    x = torch.randn(128, 3, 8, 8) * torch.linspace(0.1, 3, 3)[None, :, None, None]
    cal = sc.calibrate(model, x, images=128)
    plain = sc.compress(model, rate=0.5)
    ranks = {n: p.rank for n, p in sc.plan_compression(model, rate=0.5).layers.items() if p.rank is not None}
    white = sc.compress(model, rate=None, ranks=ranks, calibration=cal)  # the same ranks, whitened
    with torch.no_grad():
        ref = model(x)
        e_plain = float((plain(x) - ref).norm())
        e_white = float((white(x) - ref).norm())
    assert e_white < e_plain


# ---------------------------------------------------------------------------------------------------------
# recalibrate_bn


def _bn_input_stats(
    model: nn.Module, x: torch.Tensor, batch_statistics: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Exact per-channel mean and unbiased variance of every BatchNorm's input over all of ``x``; with
    ``batch_statistics`` the BatchNorms normalise by the statistics of ``x`` (training mode) on a copy."""
    if batch_statistics:
        model = copy.deepcopy(model)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.forward = lambda a, m=m: nn.functional.batch_norm(a, None, None, m.weight, m.bias, True, 0.0, m.eps)
    stats, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):

            def hook(mod, args, name=name):
                a = args[0].transpose(0, 1).reshape(args[0].shape[1], -1).double()
                stats[name] = (a.mean(1), a.var(1, unbiased=True))

            handles.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return stats


def test_recalibrate_bn_recovers_exact_statistics_and_changes_no_parameter():
    model = _cnn()
    x = torch.randn(64, 3, 8, 8) * 2 + 0.5
    params = {k: v.clone() for k, v in model.named_parameters()}
    for m in model.modules():  # corrupt the statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.1, 5)
    sc.recalibrate_bn(model, x, images=64, batch_size=64)  # one batch: exact statistics of x
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    expect = _bn_input_stats(model, x)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            # float32 batch statistics against a float64 reference
            torch.testing.assert_close(m.running_mean.double(), expect[name][0], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(m.running_var.double(), expect[name][1], rtol=1e-3, atol=1e-4)


def test_recalibrate_bn_restores_a_corrupted_model():
    model = _cnn()
    x = torch.randn(96, 3, 8, 8)
    sc.recalibrate_bn(model, x, images=96, batch_size=32)
    with torch.no_grad():
        reference = model(x[:8])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(0.01)
    with torch.no_grad():
        assert not torch.allclose(model(x[:8]), reference, atol=1e-3)
    model.train()
    momentum = model[1].momentum
    sc.recalibrate_bn(model, x, images=96, batch_size=32)
    assert model.training and model[1].momentum == momentum
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x[:8]), reference)  # deterministic given the data


def test_recalibrate_bn_without_batchnorm_warns_and_does_nothing():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="no BatchNorm"):
        sc.recalibrate_bn(model, torch.randn(4, 12), images=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_recalibrate_bn_keeps_statistics_when_data_does_not_fit():
    model = _cnn()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match="do not fit the model"):
        sc.recalibrate_bn(model, torch.randn(8, 3, 5, 5), images=8)
    assert torch.equal(model[1].running_mean, before)


@pytest.mark.parametrize(("images", "batch_size", "advice"), [(1, 256, "pass images >= 2"), (8, 1, "batch_size >= 2")])
def test_recalibrate_bn_from_single_inputs_says_what_would_do(images, batch_size, advice):
    model = _cnn()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match=f"skips batches of a single input.*only such batches: .*{advice}"):
        sc.recalibrate_bn(model, torch.randn(8, 3, 8, 8), images=images, batch_size=batch_size)
    assert torch.equal(model[1].running_mean, before)


def test_recalibrate_bn_applies_to_pruned_models():
    model = _cnn(c=8)
    x = torch.randn(32, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = sc.prune(model, rate=0.3, method="filter", input_shape=(1, 3, 8, 8))
    sc.recalibrate_bn(pruned, x, images=32)
    expect = _bn_input_stats(pruned, x[:32])
    bn_name = next(n for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d))
    bn = dict(pruned.named_modules())[bn_name]
    assert torch.isfinite(bn.running_var).all()
    assert bn.running_mean.shape == expect[bn_name][0].shape


def test_recalibration_relative_to_an_identical_reference_changes_nothing():
    model = _cnn()
    for m in model.modules():  # trained-looking statistics that no calibration set reproduces
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = copy.deepcopy(model)
    sc.recalibrate_bn(model, torch.randn(64, 3, 8, 8), images=64, batch_size=16, reference=twin)
    for k, v in model.state_dict().items():
        if "num_batches_tracked" not in k:
            torch.testing.assert_close(v, before[k], rtol=1e-6, atol=1e-6)


def test_relative_recalibration_moves_statistics_by_the_change_compression_made():
    model = _cnn(c=8)
    x = torch.randn(64, 3, 8, 8)
    small = sc.compress(model, rate=0.5)
    sc.recalibrate_bn(small, x, images=64, batch_size=64, reference=model)
    got = _bn_input_stats(small, x, batch_statistics=True)  # what recalibration measures: one batch of x
    ref = _bn_input_stats(model, x, batch_statistics=True)
    for name, m in small.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            dense_bn = dict(model.named_modules())[name]
            shift = got[name][0] - ref[name][0]
            expect_mean = dense_bn.running_mean.double() + shift
            expect_var = dense_bn.running_var.double() * got[name][1] / ref[name][1]
            torch.testing.assert_close(m.running_mean.double(), expect_mean, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(m.running_var.double(), expect_var, rtol=1e-3, atol=1e-4)


def test_centered_moment_is_the_covariance():
    x = torch.randn(300, 3, 8, 8) + 2.0
    cal = sc.calibrate(_cnn(), x, images=300, damping=0.0, layers=["0"], samples=10**6)
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27).double()
    expect = torch.cov(patches.T, correction=0)
    torch.testing.assert_close(cal.moment("0", centered=True), expect, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.one_of(st.just("same"), st.just("valid"), st.tuples(st.integers(0, 2), st.integers(0, 2))),
    mode=st.sampled_from(["zeros", "reflect", "circular"]),
    seed=st.integers(0, 1000),
)
def test_sampled_patches_times_the_kernel_are_the_conv_outputs(kernel, dilation, stride, padding, mode, seed):
    if padding == "same":
        stride = (1, 1)  # torch allows "same" only without stride
    conv = nn.Conv2d(3, 5, kernel, stride, padding, dilation, bias=False, padding_mode=mode)
    x = torch.randn(2, 3, 9, 10, generator=torch.Generator().manual_seed(seed))
    try:
        y = conv(x)
    except RuntimeError:  # a geometry torch itself refuses (e.g. reflect padding wider than the input)
        return
    everything = y.shape[0] * y.shape[2] * y.shape[3]
    patches = sample_patches(conv, x, everything, torch.Generator().manual_seed(seed))
    assert patches.shape == (everything, 3 * kernel[0] * kernel[1])
    got = patches @ conv.weight.detach().reshape(5, -1).T
    torch.testing.assert_close(got, y.detach().permute(0, 2, 3, 1).reshape(-1, 5), rtol=1e-4, atol=1e-4)

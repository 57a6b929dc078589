"""Data: datasets (digits, official CIFAR format, ImageFolder), validation split, and the on-device Loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import smoothcompress as sc
from smoothcompress import data as scd

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
SHARED_CIFAR_SHA256 = "d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a"


def toy(n=40, classes=4, shape=(3, 6, 5), seed=0) -> scd.Dataset:
    """A dataset whose images are random and whose training labels cycle through the classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    xt = torch.randint(0, 256, (n // 2, *shape), generator=g, dtype=torch.uint8)
    yt = torch.arange(n // 2) % classes
    return scd._make("toy", x, y, xt, yt, [f"c{i}" for i in range(classes)], "0" * 64, augment=True)


def identified(n, shape=(3, 6, 5)):
    """Random images labelled by their own index, so that every batch names the images it came from."""
    x = torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return x, torch.arange(n)


def denormalise(xb, mean, std):
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return torch.round((xb * s + m) * 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------------------------
# digits and Dataset
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return sc.load_dataset("digits")


def test_digits_shapes_and_split(digits):
    assert digits.name == "digits" and digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.x_train.dtype == torch.uint8 and digits.y_train.dtype == torch.int64
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert int(digits.x_train.max()) == 255 and int(digits.x_train.min()) == 0
    # stratified: every class has 20% (+-1) of its images in test
    counts_train = torch.bincount(digits.y_train, minlength=10)
    counts_test = torch.bincount(digits.y_test, minlength=10)
    assert torch.all((counts_test - 0.2 * (counts_train + counts_test)).abs() <= 1)
    assert digits.augment is False
    assert len(digits.sha256) == 64


def test_digits_is_fixed():
    a, b = sc.load_dataset("digits"), sc.load_dataset("digits")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test) and a.sha256 == b.sha256


def test_digits_values_are_rescaled_from_sklearn(digits):
    from sklearn.datasets import load_digits

    raw = load_digits().images  # 0..16
    expected = {tuple(np.round(img * 255 / 16).astype(np.uint8).ravel()) for img in raw}
    got = {tuple(img.ravel().tolist()) for img in digits.x_test[:, 0].numpy()}
    assert got <= expected


def test_channel_stats_are_exact():
    ds = toy()
    x = ds.x_train.double() / 255
    assert ds.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert ds.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_dataset_rejects_bad_tensors():
    ds = toy()
    with pytest.raises(ValueError, match="uint8"):
        dataclasses.replace(ds, x_train=ds.x_train.float())
    with pytest.raises(ValueError, match="y_test"):
        dataclasses.replace(ds, y_test=ds.y_test[:-1])


def test_unknown_dataset_is_a_data_error(tmp_path):
    with pytest.raises(sc.DataError, match="unknown dataset 'mnist'.*cifar10, cifar100, digits"):
        sc.load_dataset("mnist", root=tmp_path)
    with pytest.raises(sc.DataError, match="no such file"):
        sc.load_dataset(str(tmp_path / "missing.tar.gz"), root=tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# split_validation
# --------------------------------------------------------------------------------------------------------------------


def test_validation_split_is_disjoint_stratified_and_fixed():
    n = 250
    x, _ = identified(n)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # first pixel = index, so images are unique
    y = torch.arange(n) % 5
    ds = scd._make("toy", x, y, x[:10], y[:10], list("abcde"), "f" * 64, augment=True)
    v = sc.split_validation(ds, fraction=0.2, seed=3)
    assert v.name == "toy+val" and v.classes == ds.classes and v.sha256 == ds.sha256
    train_ids = set(v.x_train[:, 0, 0, 0].tolist())
    val_ids = set(v.x_test[:, 0, 0, 0].tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(n))
    assert len(val_ids) == 50 and torch.equal(torch.bincount(v.y_test), torch.full((5,), 10))
    # labels travel with their images
    assert torch.equal(v.y_test, v.x_test[:, 0, 0, 0].long() % 5)
    # the same seed gives the same split, another seed another one
    assert torch.equal(sc.split_validation(ds, 0.2, seed=3).x_test, v.x_test)
    assert not torch.equal(sc.split_validation(ds, 0.2, seed=4).x_test, v.x_test)
    assert v.mean == scd.channel_stats(v.x_train)[0]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_validation_fraction_must_be_in_open_interval(fraction):
    with pytest.raises(ValueError, match="fraction"):
        sc.split_validation(toy(), fraction=fraction)


# --------------------------------------------------------------------------------------------------------------------
# augment_batch
# --------------------------------------------------------------------------------------------------------------------


def test_augment_identity_and_flip_are_exact():
    x = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8)
    centre = torch.full((5,), 4)
    assert torch.equal(scd.augment_batch(x, centre, centre, torch.zeros(5, dtype=torch.bool)), x)
    assert torch.equal(scd.augment_batch(x, centre, centre, torch.ones(5, dtype=torch.bool)), x.flip(-1))


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 4),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    padding=st.integers(0, 4),
    data=st.data(),
)
def test_augment_equals_a_window_of_the_padded_image(b, c, h, w, padding, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    x = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    oy = torch.tensor(data.draw(st.lists(st.integers(0, 2 * padding), min_size=b, max_size=b)))
    ox = torch.tensor(data.draw(st.lists(st.integers(0, 2 * padding), min_size=b, max_size=b)))
    flip = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b, max_size=b)))
    out = scd.augment_batch(x, oy, ox, flip, padding)
    padded = F.pad(x, (padding,) * 4)
    for i in range(b):
        window = padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window)


# --------------------------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------------------------


def make_loader(ds, batch_size=8, **kw):
    kw.setdefault("train", True)
    return scd.Loader(ds.x_train, ds.y_train, batch_size, mean=ds.mean, std=ds.std, **kw)


def collect(loader):
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_test_loader_is_ordered_normalised_and_complete():
    ds = toy(n=30)
    loader = scd.Loader(ds.x_test, ds.y_test, 4, train=False, mean=ds.mean, std=ds.std, augment=True)
    assert len(loader) == 4  # 15 images: 4 + 4 + 4 + 3, nothing dropped
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [4, 4, 4, 3]
    xb, yb = collect(loader)
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.shape == (15, 3, 6, 5)
    assert torch.equal(yb, ds.y_test)
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    torch.testing.assert_close(xb, (ds.x_test.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)


def test_train_loader_drops_last_and_shuffles():
    ds = toy(n=30)
    loader = make_loader(ds, batch_size=8)
    assert len(loader) == 3 and loader.num_samples == 30
    _, y = collect(loader)
    assert len(y) == 24 and len(set(y.tolist())) == 4
    x_idx, y_idx = identified(30)
    loader = scd.Loader(x_idx, y_idx, 8, train=True, mean=(0.5,) * 3, std=(0.25,) * 3)
    _, order = collect(loader)
    assert len(set(order.tolist())) == 24 and not torch.equal(order, torch.arange(24))
    assert len(make_loader(ds, batch_size=8, drop_last=False)) == 4


def test_loader_is_deterministic_per_seed_and_epoch():
    ds = toy(n=48)
    a, b = make_loader(ds, augment=True, seed=7), make_loader(ds, augment=True, seed=7)
    for epoch in (0, 3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    a.set_epoch(0)
    first = collect(a)
    a.set_epoch(1)
    second = collect(a)
    assert not torch.equal(first[1], second[1])
    a.set_epoch(0)
    again = collect(a)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other_seed = make_loader(ds, augment=True, seed=8)
    assert not torch.equal(collect(other_seed)[1], first[1])


def test_set_epoch_start_batch_resumes_mid_epoch():
    ds = toy(n=48)
    loader = make_loader(ds, augment=True, seed=1)
    loader.set_epoch(5)
    full = list(loader)
    loader.set_epoch(5, start_batch=2)
    rest = list(loader)
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list(loader)) == len(full)  # start_batch applies to one pass only
    with pytest.raises(ValueError, match="start_batch"):
        loader.set_epoch(0, start_batch=len(full) + 1)


def test_loader_augmentation_is_a_crop_or_flip_of_the_source():
    x, ids = identified(64, shape=(3, 8, 8))
    mean, std = scd.channel_stats(x)
    loader = scd.Loader(x, ids, 16, train=True, mean=mean, std=std, augment=True, seed=2)
    seen = set()
    padded = F.pad(x, (4,) * 4)
    for xb, yb in loader:
        images = denormalise(xb, mean, std)
        for img, i in zip(images, yb.tolist(), strict=True):
            matches = [
                (dy, dx, f)
                for dy in range(9)
                for dx in range(9)
                for f in (False, True)
                if torch.equal(
                    img,
                    padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1) if f else padded[i, :, dy : dy + 8, dx : dx + 8],
                )
            ]
            assert matches, f"sample {i} is not a padded crop (or its mirror) of its source image"
            seen.update(matches)
    # offsets and flips really vary across samples
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10 and {f for *_, f in seen} == {False, True}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ddp_shards_are_disjoint_equal_and_cover_the_epoch(world_size):
    n, bs = 103, 5
    x, ids = identified(n)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, seed=4, augment=True, drop_last=False)
    shards = []
    for rank in range(world_size):
        loader = scd.Loader(x, ids, bs, train=True, rank=rank, world_size=world_size, **kw)
        loader.set_epoch(2)
        shards.append(collect(loader)[1].tolist())
    sizes = {len(s) for s in shards}
    assert sizes == {n // world_size}
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat) == (n // world_size) * world_size
    # the shards are slices of the same epoch permutation that one process uses
    single = scd.Loader(x, ids, n, train=True, **kw)
    single.set_epoch(2)
    assert set(flat) <= set(collect(single)[1].tolist())
    # evaluation shards cover every image exactly once
    evals = [
        collect(scd.Loader(x, ids, bs, train=False, rank=r, world_size=world_size, mean=(0.5,) * 3, std=(0.25,) * 3))[1]
        for r in range(world_size)
    ]
    assert sorted(torch.cat(evals).tolist()) == list(range(n))


def test_ddp_global_batch_matches_one_process():
    """Step i of all ranks together sees the same augmented images as step i of one process with the global batch."""
    x, ids = identified(96)
    kw = dict(train=True, mean=(0.4,) * 3, std=(0.2,) * 3, seed=9, augment=True)
    single = list(scd.Loader(x, ids, 24, **kw))
    ranks = [list(scd.Loader(x, ids, 8, rank=r, world_size=3, **kw)) for r in range(3)]
    assert len(single) == len(ranks[0]) == 4
    for step, (xs, ys) in enumerate(single):
        xr = torch.cat([ranks[r][step][0] for r in range(3)])
        yr = torch.cat([ranks[r][step][1] for r in range(3)])
        order_s, order_r = torch.argsort(ys), torch.argsort(yr)
        assert torch.equal(ys[order_s], yr[order_r]) and torch.equal(xs[order_s], xr[order_r])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"mean": (0.5,)}, "one per channel"),
        ({"std": (0.5, 0.0, 0.5)}, "positive"),
        ({"batch_size": 100}, "no batches"),
    ],
)
def test_loader_rejects_bad_arguments(kwargs, match):
    ds = toy(n=30)
    args = dict(batch_size=8, train=True, mean=ds.mean, std=ds.std) | kwargs
    with pytest.raises(ValueError, match=match):
        scd.Loader(ds.x_train, ds.y_train, **args)
    with pytest.raises(ValueError, match="uint8"):
        scd.Loader(ds.x_train.float(), ds.y_train, 8, train=True, mean=ds.mean, std=ds.std)

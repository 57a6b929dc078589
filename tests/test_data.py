"""Data: datasets (digits, official CIFAR format, ImageFolder), validation split, and the on-device Loader."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import tarfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from imagefolders import tar_gz
from PIL import Image

import smoothcompress as sc
from smoothcompress.study import data as scd
from smoothcompress.study.data import imagefolder, official

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
SHARED_CIFAR_SHA256 = "d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a"


def toy(n=40, classes=4, shape=(3, 6, 5), seed=0) -> scd.Dataset:
    """A dataset whose images are random and whose training labels cycle through the classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    xt = torch.randint(0, 256, (n // 2, *shape), generator=g, dtype=torch.uint8)
    yt = torch.arange(n // 2) % classes
    return scd.Dataset.from_arrays("toy", x, y, xt, yt, [f"c{i}" for i in range(classes)], "0" * 64, augment=True)


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
    ds = scd.Dataset.from_arrays("toy", x, y, x[:10], y[:10], list("abcde"), "f" * 64, augment=True)
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
    # the shards interleave to the epoch permutation that one process uses: rank r takes its positions r::N
    single = scd.Loader(x, ids, n, train=True, **kw)
    single.set_epoch(2)
    order = collect(single)[1].tolist()
    assert sorted(order) == list(range(n))  # a permutation of the whole split
    used = (n // world_size) * world_size
    assert [shards[k % world_size][k // world_size] for k in range(used)] == order[:used]
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    ds = toy(n=64, shape=(3, 8, 8))
    kw = dict(train=True, mean=ds.mean, std=ds.std, augment=True, seed=5)
    cpu = scd.Loader(ds.x_train, ds.y_train, 16, **kw)
    gpu = scd.Loader(ds.x_train, ds.y_train, 16, device="cuda", **kw)
    for loader in (cpu, gpu):
        loader.set_epoch(3)
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), atol=1e-6, rtol=1e-6)


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


# --------------------------------------------------------------------------------------------------------------------
# Official CIFAR format: download, md5, extraction, offline
# --------------------------------------------------------------------------------------------------------------------


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def build_official(directory: Path, name: str, per_batch: int = 3, seed: int = 0):
    """A small archive in the official python format of ``name``, and the registry entry that describes it.

    Returns the archive path, the entry (with this archive's md5s), and the expected x/y train/test arrays.
    """
    spec = scd.OFFICIAL[name]
    rng = np.random.default_rng(seed)
    classes = [f"class{i}".encode() for i in range(5)]
    members, md5s, expected = {}, {}, {}
    for split, files in (("train", spec.train), ("test", spec.test)):
        xs, ys = [], []
        for fname, _ in files:
            x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            y = rng.integers(0, len(classes), per_batch).tolist()
            batch = {b"batch_label": fname.encode(), spec.label_key.encode(): y, b"data": x, b"filenames": [b"x.png"]}
            members[fname] = pickle.dumps(batch, protocol=2)
            xs.append(x.reshape(-1, 3, 32, 32))
            ys += y
        expected[f"x_{split}"], expected[f"y_{split}"] = np.concatenate(xs), np.array(ys)
    members[spec.meta[0]] = pickle.dumps({spec.names_key.encode(): classes, b"num_cases_per_batch": 3}, protocol=2)
    md5s = {fname: md5_of(data) for fname, data in members.items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for fname, data in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{fname}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = directory / spec.filename
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(buf.getvalue())
    entry = dataclasses.replace(
        spec,
        md5=md5_of(buf.getvalue()),
        train=tuple((f, md5s[f]) for f, _ in spec.train),
        test=tuple((f, md5s[f]) for f, _ in spec.test),
        meta=(spec.meta[0], md5s[spec.meta[0]]),
    )
    expected["classes"] = [c.decode() for c in classes]
    return archive, entry, expected


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve a folder over HTTP on localhost; yields (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_verify_extract_and_reuse(name, serve, tmp_path, monkeypatch):
    mirror, url = serve
    archive, entry, expected = build_official(mirror, name)
    monkeypatch.setitem(scd.OFFICIAL, name, entry)
    monkeypatch.setenv("SMOOTHCOMPRESS_DATA_URL", url)
    root = tmp_path / "root"
    ds = sc.load_dataset(name, root=root)
    assert ds.name == name and ds.classes == expected["classes"] and ds.augment
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(ds, key).numpy(), expected[key]), key
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (root / entry.filename).read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in (root / entry.folder).iterdir()) == sorted(f for f, _ in entry.files)
    assert not list(root.rglob("*.part"))
    # later loads use the local copy: no network needed
    monkeypatch.setenv("SMOOTHCOMPRESS_DATA_URL", f"http://127.0.0.1:{closed_port()}/")
    again = sc.load_dataset(name, root=root, download=False)
    assert torch.equal(again.x_train, ds.x_train) and again.sha256 == ds.sha256
    # the extracted folder alone is enough too (as torchvision leaves it)
    (root / entry.filename).unlink()
    alone = sc.load_dataset(name, root=root, download=False)
    assert torch.equal(alone.x_test, ds.x_test)


def test_official_files_can_be_named_by_path(tmp_path, monkeypatch):
    archive, entry, expected = build_official(tmp_path / "mine", "cifar100")
    monkeypatch.setitem(scd.OFFICIAL, "cifar100", entry)
    by_archive = sc.load_dataset(str(archive), download=False)  # extracts beside the archive
    by_folder = sc.load_dataset(str(tmp_path / "mine" / entry.folder), download=False)
    by_parent = sc.load_dataset(str(tmp_path / "mine"), download=False)
    by_root = sc.load_dataset("cifar100", root=archive, download=False)
    for ds in (by_archive, by_folder, by_parent, by_root):
        assert ds.name == "cifar100" and np.array_equal(ds.x_test.numpy(), expected["x_test"])
    with pytest.raises(sc.DataError, match=r"is a file, not the folder that holds.*--dataset"):
        sc.load_dataset("cifar10", root=tar_gz(tmp_path / "mine", tmp_path / "jpegs.tar.gz"))


def test_download_with_wrong_md5_is_deleted(serve, tmp_path, monkeypatch):
    mirror, url = serve
    _, entry, _ = build_official(mirror, "cifar10")
    monkeypatch.setitem(scd.OFFICIAL, "cifar10", dataclasses.replace(entry, md5="0" * 32))
    monkeypatch.setenv("SMOOTHCOMPRESS_DATA_URL", url)
    root = tmp_path / "root"
    with pytest.raises(sc.DataError, match=r"md5 [0-9a-f]{32}, expected 0{32}.*deleted"):
        sc.load_dataset("cifar10", root=root)
    assert list(root.iterdir()) == []


def test_a_local_archive_with_wrong_md5_is_reported_not_deleted(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(sc.DataError, match="does not match the official md5.*Delete it"):
        sc.load_dataset("cifar10", root=root)
    assert (root / "cifar-10-python.tar.gz").exists()


@pytest.mark.timeout(30)
def test_offline_fails_fast_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHCOMPRESS_DATA_URL", f"http://127.0.0.1:{closed_port()}/")
    root = tmp_path / "nowhere"
    with pytest.raises(sc.DataError) as info:
        sc.load_dataset("cifar10", root=root)
    message = str(info.value)
    assert "CIFAR-10 is not in" in message and str(root) in message
    assert "cifar-10-python.tar.gz" in message and "cifar-10-batches-py/" in message and "--data DIR" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert not root.exists()  # nothing half-made left behind


@pytest.mark.timeout(30)
def test_stalled_server_times_out(tmp_path, monkeypatch):
    with socket.socket() as listener:  # accepts connections into its backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        monkeypatch.setenv("SMOOTHCOMPRESS_DATA_URL", f"http://127.0.0.1:{listener.getsockname()[1]}/")
        monkeypatch.setattr(official, "DOWNLOAD_TIMEOUT", 0.5)
        with pytest.raises(sc.DataError, match="could not be downloaded.*timed out"):
            sc.load_dataset("cifar100", root=tmp_path)


def test_download_false_does_not_touch_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("download=False must not open a connection")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(sc.DataError, match="CIFAR-100 is not in .*download=False"):
        sc.load_dataset("cifar100", root=tmp_path, download=False)


def test_tampered_batches_are_never_unpickled(serve, tmp_path, monkeypatch):
    mirror, url = serve
    _, entry, _ = build_official(mirror, "cifar10")
    monkeypatch.setitem(scd.OFFICIAL, "cifar10", entry)
    monkeypatch.setenv("SMOOTHCOMPRESS_DATA_URL", url)
    root = tmp_path / "root"
    sc.load_dataset("cifar10", root=root)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2)
    (root / entry.folder / "data_batch_1").write_bytes(evil)
    with pytest.raises(sc.DataError, match="data_batch_1 does not match its official md5"):
        sc.load_dataset("cifar10", root=root)
    # even with a matching md5, the restricted unpickler refuses anything but numpy arrays
    train = ((entry.train[0][0], md5_of(evil)), *entry.train[1:])
    monkeypatch.setitem(scd.OFFICIAL, "cifar10", dataclasses.replace(entry, train=train))
    with pytest.raises(sc.DataError, match="refusing to load posix.mkdir"):
        sc.load_dataset("cifar10", root=root)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------------------------------


def build_imagefolder(directory: Path, mode: str = "RGB", size=(5, 6), per_class=(3, 2), seed=0):
    """PNG images (lossless, so pixels round-trip) in train/<class>/ and test/<class>/; returns expected arrays."""
    rng = np.random.default_rng(seed)
    classes = ["dog", "cat", "bird"]  # written unsorted; labels follow sorted order
    expected = {}
    channels = 1 if mode == "L" else 3
    for split, n in zip(("train", "test"), per_class, strict=True):
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            (directory / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(
                    directory / split / cls / f"{i:03d}.png"
                )
                xs.append(pixels.transpose(2, 0, 1))
                ys.append(label)
        expected[f"x_{split}"], expected[f"y_{split}"] = np.stack(xs), np.array(ys)
    (directory / "README.txt").write_text("not an image, ignored")
    expected["classes"] = sorted(classes)
    return expected


def assert_matches(ds, expected):
    assert ds.classes == expected["classes"]
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(ds, key).numpy(), expected[key]), key


def test_imagefolder_directory_and_archive_agree_and_cache(tmp_path, monkeypatch):
    src = tmp_path / "pets"
    expected = build_imagefolder(src)
    cache_root = tmp_path / "cache"
    from_dir = sc.load_dataset(str(src), root=cache_root)
    assert from_dir.name == "imagefolder:pets" and from_dir.input_shape == (3, 6, 5) and from_dir.augment
    assert_matches(from_dir, expected)
    archive = tar_gz(src, tmp_path / "pets-v1.tar.gz", prefix="pets/")  # a top-level folder is allowed
    from_tar = sc.load_dataset(str(archive), root=cache_root)
    assert (
        from_tar.name == "imagefolder:pets-v1" and from_tar.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    )
    assert_matches(from_tar, expected)
    assert len(list((cache_root / "imagefolder").glob("pets-v1-*.npz"))) == 1
    assert from_tar.mean == pytest.approx(from_dir.mean) and from_tar.std == pytest.approx(from_dir.std)

    # the second load comes from the cache, with no decoding
    def no_decode(*args):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(imagefolder, "decode_imagefolder", no_decode)
    assert_matches(sc.load_dataset(str(archive), root=cache_root), expected)
    assert_matches(sc.load_dataset(str(src), root=cache_root), expected)


def test_imagefolder_grayscale_has_one_channel(tmp_path):
    expected = build_imagefolder(tmp_path / "gray", mode="L")
    ds = sc.load_dataset(str(tmp_path / "gray"), root=tmp_path / "cache")
    assert ds.input_shape == (1, 6, 5) and len(ds.mean) == 1
    assert_matches(ds, expected)


def test_truncated_archive_is_a_data_error(tmp_path):
    build_imagefolder(tmp_path / "src", per_class=(20, 5))
    archive = tar_gz(tmp_path / "src", tmp_path / "data.tar.gz")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(sc.DataError, match="data.tar.gz is corrupt or truncated"):
        sc.load_dataset(str(archive), root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_corrupt_image_is_named(tmp_path):
    build_imagefolder(tmp_path / "src")
    (tmp_path / "src" / "train" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    archive = tar_gz(tmp_path / "src", tmp_path / "data.tar.gz")
    with pytest.raises(sc.DataError, match=r"cannot decode .*data.tar.gz::train/cat/bad.png"):
        sc.load_dataset(str(archive), root=tmp_path / "cache")


@pytest.mark.parametrize("damage", ["flip", "truncate", "rewrite", "other-source"])
def test_corrupt_cache_is_a_data_error(tmp_path, damage):
    build_imagefolder(tmp_path / "src", per_class=(8, 4))
    archive = tar_gz(tmp_path / "src", tmp_path / "data.tar.gz")
    sc.load_dataset(str(archive), root=tmp_path / "cache")
    (cache,) = (tmp_path / "cache" / "imagefolder").glob("*.npz")
    blob = bytearray(cache.read_bytes())
    if damage == "flip":  # a flipped byte inside x_train
        start = blob.index(b"x_train.npy")
        blob[blob.index(b"\n", blob.index(b"{'descr'", start)) + 10] ^= 0xFF
        cache.write_bytes(bytes(blob))
        match = "corrupt or partial"
    elif damage == "truncate":
        cache.write_bytes(bytes(blob[: len(blob) // 2]))
        match = "corrupt or partial"
    elif damage == "rewrite":  # a well-formed file whose pixels differ from what was cached: only the checksum tells
        with np.load(cache) as z:
            arrays = dict(z)
        arrays["x_train"][0, 0, 0, 0] ^= 0xFF
        with open(cache, "wb") as f:
            np.savez(f, **arrays)
        match = "checksum does not match"
    else:  # a cache written for another archive under this name
        build_imagefolder(tmp_path / "other", per_class=(8, 4), seed=1)
        other = tar_gz(tmp_path / "other", tmp_path / "other.tar.gz")
        sc.load_dataset(str(other), root=tmp_path / "cache2")
        (other_cache,) = (tmp_path / "cache2" / "imagefolder").glob("*.npz")
        cache.write_bytes(other_cache.read_bytes())
        match = "another source"
    with pytest.raises(sc.DataError, match=match):
        sc.load_dataset(str(archive), root=tmp_path / "cache")


@pytest.mark.parametrize(
    ("break_it", "match"),
    [
        (lambda d: shutil.rmtree(d / "test"), r"no images under test/<class>/"),
        (lambda d: Image.new("RGB", (7, 7)).save(d / "train" / "cat" / "big.png"), "resize"),
    ],
)
def test_imagefolder_layout_errors(tmp_path, break_it, match):
    build_imagefolder(tmp_path / "src")
    break_it(tmp_path / "src")
    with pytest.raises(sc.DataError, match=match):
        sc.load_dataset(str(tmp_path / "src"), root=tmp_path / "cache")


def test_test_class_without_training_images(tmp_path):
    build_imagefolder(tmp_path / "src")
    (tmp_path / "src" / "test" / "fish").mkdir()
    Image.new("RGB", (5, 6)).save(tmp_path / "src" / "test" / "fish" / "0.png")
    with pytest.raises(sc.DataError, match=r"test classes \['fish'\] have no training images"):
        sc.load_dataset(str(tmp_path / "src"), root=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------------------------
# The real CIFAR-10 JPEG copy in ../shared/data
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.cifar
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason=f"{SHARED_CIFAR} is absent (see ../shared/data/README.md)")
def test_shared_cifar10_jpeg(tmp_path):
    ds = sc.load_dataset(str(SHARED_CIFAR), root=tmp_path)
    assert ds.name == "imagefolder:cifar10-jpeg" and ds.sha256 == SHARED_CIFAR_SHA256
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 1000))
    assert ds.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.01)  # the well-known CIFAR-10 statistics
    cached = sc.load_dataset(str(SHARED_CIFAR), root=tmp_path)
    assert torch.equal(cached.x_train, ds.x_train) and torch.equal(cached.y_test, ds.y_test)
    xb, yb = next(iter(sc.Loader(ds.x_train, ds.y_train, 128, train=True, mean=ds.mean, std=ds.std, augment=True)))
    assert xb.shape == (128, 3, 32, 32) and yb.shape == (128,)

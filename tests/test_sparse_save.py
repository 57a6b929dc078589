"""save(sparse=True): pruned weights stored as non-zero values plus a bitmask or indices, rebuilt exactly by load;
about a tenth of the dense bytes at 90% magnitude pruning; hostile sparse metadata refused before allocating."""

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import smoothcompress as sc


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, one row per entry."""
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).reshape(t.numel(), t.element_size())


def same_tensors(a: nn.Module, b: nn.Module) -> bool:
    """Same names, dtypes, shapes and entries; non-zero entries bit for bit (a zero may come back as +0.0)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype
        and sa[k].shape == sb[k].shape
        and torch.equal(sa[k], sb[k])
        and torch.equal(bits(sa[k])[sa[k].reshape(-1) != 0], bits(sb[k])[sb[k].reshape(-1) != 0])
        for k in sa
    )


def sparse_weight(shape, density: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen).to(dtype)
    keep = torch.rand(shape, generator=gen) < density
    w[~keep] = 0.0
    w.view(-1)[::7] *= -1  # some of the zeros become -0.0, as magnitude pruning leaves them
    return w


@settings(max_examples=30, deadline=None)
@given(
    out_features=st.integers(1, 96),
    in_features=st.integers(1, 96),
    density=st.sampled_from([0.0, 0.01, 0.03, 0.1, 0.5, 0.9, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_linear_round_trip_is_exact(tmp_path_factory, out_features, in_features, density, dtype, seed):
    layer = nn.Linear(in_features, out_features).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(sparse_weight(layer.weight.shape, density, seed, dtype))
    path = sc.save(layer, tmp_path_factory.mktemp("s") / "m.safetensors", sparse=True)
    loaded = sc.load(path, model=nn.Linear(in_features, out_features).to(dtype))
    assert same_tensors(loaded, layer)
    entry = sc.read_metadata(path)["sparse"].get("weight")
    n, size = layer.weight.numel(), layer.weight.element_size()
    if entry is not None:  # stored sparse only where that is smaller, with the smaller of mask and indices
        k = int((layer.weight != 0).sum())
        assert entry["nnz"] == k and entry["shape"] == [out_features, in_features]
        indices = 4 * k < (n + 7) // 8 and n <= 1024 * (k + 1)  # indices bounded by the data (io._INDEX_SPAN)
        assert entry["encoding"] == ("indices" if indices else "bitmask")
    elif n * size >= sc.io.SPARSE_MIN_BYTES:
        assert density >= 0.5


@settings(max_examples=10, deadline=None)
@given(
    channels=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    kernel=st.integers(1, 5),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_conv_round_trip_is_exact(tmp_path_factory, channels, kernel, density, seed):
    conv = nn.Conv2d(channels[0], channels[1], kernel, bias=False)
    with torch.no_grad():
        conv.weight.copy_(sparse_weight(conv.weight.shape, density, seed))
    path = sc.save(conv, tmp_path_factory.mktemp("s") / "m.safetensors", sparse=True)
    assert same_tensors(sc.load(path, model=nn.Conv2d(channels[0], channels[1], kernel, bias=False)), conv)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = sc.create_model("resnet20", width=16)  # 272k parameters
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial BatchNorm statistics
    return model.eval()


def test_a_90_percent_pruned_model_takes_about_a_tenth(resnet, tmp_path):
    pruned = sc.prune(resnet, 0.9, method="magnitude")
    dense = sc.save(pruned, tmp_path / "dense.safetensors")
    sparse = sc.save(pruned, tmp_path / "sparse.safetensors", sparse=True)
    ratio = sparse.stat().st_size / dense.stat().st_size
    assert ratio <= 0.2, ratio
    loaded = sc.load(sparse)
    assert same_tensors(loaded, pruned) and loaded.sc_compression == pruned.sc_compression
    meta = sc.read_metadata(sparse)
    assert meta["format_version"] == 2
    # layers global pruning emptied (nnz 0) take indices if small (io._INDEX_SPAN), the others a bitmask
    assert {e["encoding"] for e in meta["sparse"].values() if e["nnz"] > 0} == {"bitmask"}
    assert all(name.endswith(".weight") for name in meta["sparse"])  # BatchNorm and biases stay dense


def test_dense_and_compressed_models_are_stored_as_they_are(resnet, tmp_path):
    for i, model in enumerate([resnet, sc.compress(resnet, 0.5)]):
        plain = sc.save(model, tmp_path / f"plain{i}.safetensors")
        sparse = sc.save(model, tmp_path / f"sparse{i}.safetensors", sparse=True)
        # nothing sparse: the same version-1 file (safetensors orders its metadata map at random)
        assert sparse.stat().st_size == plain.stat().st_size
        assert sc.read_metadata(sparse) == sc.read_metadata(plain) and sc.read_metadata(sparse)["format_version"] == 1
        assert same_tensors(sc.load(sparse), model)


def test_names_with_the_separator_are_refused(tmp_path):
    model = nn.Sequential()
    model.add_module("a#b", nn.Linear(64, 64))
    with pytest.raises(ValueError, match="contains '#'"):
        sc.save(model, tmp_path / "m.safetensors", sparse=True)
    assert not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# Hostile files: the sparse entries and parts of a saved file are changed, its checksum dropped


def saved_parts(tmp_path, density: float):
    layer = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        layer.weight.copy_(sparse_weight(layer.weight.shape, density, seed=0))
    path = sc.save(layer, tmp_path / "ok.safetensors", sparse=True)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        meta = dict(f.metadata())
    del meta["weights_sha256"]
    return tensors, meta


def hostile(tmp_path, density, change) -> str:
    """The one-line error of loading a file whose sparse entries or parts were changed by ``change``."""
    tensors, meta = saved_parts(tmp_path, density)
    entries = json.loads(meta["sparse"])
    change(tensors, entries["weight"])
    meta["sparse"] = json.dumps(entries)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(sc.CheckpointError) as info:
        sc.load(tmp_path / "bad.safetensors", model=nn.Linear(64, 32, bias=False))
    message = str(info.value)
    assert "\n" not in message and "'weight'" in message
    return message


def test_a_huge_shape_is_refused_before_allocating(tmp_path):
    message = hostile(tmp_path, 0.1, lambda t, e: e.update(shape=[10**6, 10**6]))
    assert "more than its stored parts can hold" in message


@pytest.mark.parametrize(
    ("density", "change", "match"),
    [
        (0.1, lambda t, e: e.update(nnz=e["nnz"] + 1), "stored values"),
        (0.1, lambda t, e: e.update(nnz=-1), "not a count"),
        (0.1, lambda t, e: e.update(encoding="rle"), "unknown encoding"),
        (0.1, lambda t, e: e.update(extra=1), "exactly 'shape', 'encoding' and 'nnz'"),
        (0.1, lambda t, e: t.pop("weight#mask"), "tensor is missing"),
        (0.1, lambda t, e: t.update({"weight#mask": t["weight#mask"][:-1]}), "the mask must be 256 uint8"),
        (0.1, lambda t, e: t["weight#mask"].bitwise_xor_(torch.tensor(1, dtype=torch.uint8)), "set bits for nnz"),
        (0.01, lambda t, e: t["weight#indices"].__setitem__(-1, 2048), r"within \[0, 2048\)"),
        (0.01, lambda t, e: t["weight#indices"].__setitem__(0, -5), r"within \[0, 2048\)"),
        (0.01, lambda t, e: t["weight#indices"].__setitem__(1, int(t["weight#indices"][0])), "increase strictly"),
        (0.01, lambda t, e: t.update({"weight#indices": t["weight#indices"].long()}), "must be .* int32"),
        (0.01, lambda t, e: t.update({"weight#values": t["weight#values"][:-1]}), "stored values"),
        (0.1, lambda t, e: t.update(weight=torch.zeros(32, 64)), "both dense and sparse"),
    ],
)
def test_hostile_sparse_metadata_is_refused(tmp_path, density, change, match):
    """Density 0.1 is stored with a bitmask, 0.01 (fewer than 1/32 non-zero) with indices."""
    assert re.search(match, hostile(tmp_path, density, change))


def test_a_sparse_entry_for_a_tensor_the_model_lacks_is_refused(tmp_path):
    tensors, meta = saved_parts(tmp_path, 0.1)
    meta["sparse"] = json.dumps({"other": json.loads(meta["sparse"])["weight"]})
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(sc.CheckpointError, match="'other' is not a tensor of the model"):
        sc.load(tmp_path / "bad.safetensors", model=nn.Linear(64, 32, bias=False))
    meta["sparse"] = "[1, 2]"
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(sc.CheckpointError, match="'sparse' must be a JSON object"):
        sc.load(tmp_path / "bad.safetensors", model=nn.Linear(64, 32, bias=False))

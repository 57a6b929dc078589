"""save/load: round trips of dense, compressed and filter-pruned models, no pickle, and clear errors on bad files."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import smoothcompress as sc
from smoothcompress import io as scio
from smoothcompress.factorized import Factorized

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = sc.create_model("resnet20", width=4)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # non-trivial BatchNorm statistics
    return model.eval()


@pytest.fixture(scope="module")
def saved(resnet, tmp_path_factory):
    return sc.save(resnet, tmp_path_factory.mktemp("ckpt") / "model.safetensors")


def same_function(a: nn.Module, b: nn.Module, x: torch.Tensor = X) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_dense_round_trip(resnet, saved):
    loaded = sc.load(saved)
    assert same_function(loaded, resnet)
    assert loaded.sc_arch == resnet.sc_arch and not loaded.training
    for k, v in resnet.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


@pytest.mark.parametrize("scheme", ["channel", "spatial", "auto"])
def test_compressed_round_trip(resnet, scheme, tmp_path):
    small = sc.compress(resnet, 0.5, scheme=scheme)
    loaded = sc.load(sc.save(small, tmp_path / "small.safetensors"))
    assert same_function(loaded, small)
    before = {n: m.config() for n, m in small.named_modules() if isinstance(m, Factorized)}
    after = {n: m.config() for n, m in loaded.named_modules() if isinstance(m, Factorized)}
    assert before and after == before
    assert loaded.sc_compression == small.sc_compression
    report = sc.compress_report(resnet, loaded, (1, 3, 32, 32))
    assert report.rate == pytest.approx(small.sc_compression.rate_achieved)


def test_float64_model_keeps_its_dtype(tmp_path):
    model = sc.create_model("mlp", width=16).double().eval()
    loaded = sc.load(sc.save(model, tmp_path / "m.safetensors"))
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert same_function(loaded, model, x)


def test_filter_pruned_model_round_trip(tmp_path):
    """Torch-Pruning changes channel counts in place; load rebuilds every changed layer from its recorded config."""
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = sc.create_model("resnet20", width=8).eval()
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 3, 32, 32),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    pruner.step()
    assert model.conv1.out_channels == 4
    loaded = sc.load(sc.save(model, tmp_path / "pruned.safetensors"))
    assert loaded.conv1.weight.shape == (4, 3, 3, 3) and loaded.bn1.num_features == 4
    assert same_function(loaded, model)


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_user_model_needs_a_skeleton(tmp_path):
    torch.manual_seed(0)
    model = UserNet().eval()
    path = sc.save(model, tmp_path / "user.safetensors")
    with pytest.raises(sc.CheckpointError, match=r"load\(path, model="):
        sc.load(path)
    loaded = sc.load(path, model=UserNet())
    assert same_function(loaded, model)


def test_compressed_user_model_loads_into_a_dense_skeleton(tmp_path):
    torch.manual_seed(0)
    small = sc.compress(UserNet().eval(), None, ranks={"features.0": 4})
    loaded = sc.load(sc.save(small, tmp_path / "user.safetensors"), model=UserNet())
    assert isinstance(loaded.features[0], sc.FactorizedConv2d) and loaded.features[0].rank == 4
    assert same_function(loaded, small)


def layer_norm_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))


def group_norm_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 4),
    )  # fmt: skip


def conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(3, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 16, 3), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip


def embedding_net() -> nn.Module:
    return nn.Sequential(nn.Embedding(20, 16, padding_idx=0), nn.Flatten(), nn.Linear(3 * 16, 4))


def grown_vocabulary(model: nn.Module) -> nn.Module:
    """The embedding table resized to 30 rows (as after adding tokens), 0 still the padding row."""
    model[0] = nn.Embedding(30, 16, padding_idx=0)
    return model


SHAPE_CHANGES = {  # skeleton builder, shape change, example input
    "LayerNorm": (layer_norm_mlp, lambda m: sc.prune(m, 0.4, "filter", input_shape=(1, 16)), torch.randn(3, 16)),
    "GroupNorm": (
        group_norm_cnn,
        lambda m: sc.prune(m, 0.4, "filter", input_shape=(1, 3, 8, 8)),
        torch.randn(3, 3, 8, 8),
    ),
    "Conv1d": (conv1d_net, lambda m: sc.prune(m, 0.4, "filter", input_shape=(1, 3, 10)), torch.randn(3, 3, 10)),
    "Embedding": (embedding_net, grown_vocabulary, torch.tensor([[0, 25, 7], [29, 1, 2]])),
}


@pytest.mark.parametrize("kind", list(SHAPE_CHANGES))
def test_reshaped_layers_of_the_new_known_types_round_trip(kind, tmp_path):
    make, change, x = SHAPE_CHANGES[kind]
    torch.manual_seed(0)
    changed = change(make().eval())
    reshaped = [n for n, m in changed.named_modules() if type(m).__name__ == kind]
    assert reshaped and any(
        changed.get_submodule(n).weight.shape != make().get_submodule(n).weight.shape for n in reshaped
    )
    loaded = sc.load(sc.save(changed, tmp_path / "m.safetensors"), model=make())
    assert same_function(loaded, changed, x)
    for n in reshaped:
        assert repr(loaded.get_submodule(n)) == repr(changed.get_submodule(n))


def prelu_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)
    )  # fmt: skip


def test_save_refuses_a_reshaped_layer_that_load_cannot_rebuild(tmp_path):
    torch.manual_seed(0)
    pruned = sc.prune(prelu_cnn().eval(), 0.4, method="filter", input_shape=(1, 3, 8, 8))
    assert pruned[1].weight.shape[0] < 16 and "1" in pruned.sc_compression.details["reshaped"]
    path = tmp_path / "pruned.safetensors"
    with pytest.raises(
        ValueError, match=r"^cannot save .*pruned\.safetensors: module '1' \(PReLU\) changed shape"
    ) as e:
        sc.save(pruned, path)
    assert "\n" not in str(e.value) and "LayerNorm" in str(e.value)  # one line, naming what load rebuilds
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file either
    sc.save(prelu_cnn(), path)  # an old file is left as it was
    before = path.read_bytes()
    with pytest.raises(ValueError, match="changed shape"):
        sc.save(pruned, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_refuses_a_registry_model_whose_unknown_layer_does_not_fit_the_registry(tmp_path):
    model = sc.create_model("cnn")
    model[13] = nn.PReLU(128)  # the registry model has a ReLU (no tensors) there: load would fail
    with pytest.raises(ValueError, match=r"module '13' \(PReLU\) changed shape"):
        sc.save(model, tmp_path / "cnn.safetensors")
    assert not (tmp_path / "cnn.safetensors").exists()
    model[13] = nn.ReLU()
    model[12] = nn.Linear(64, 128, bias=False)  # a known type is rebuilt from its record: saved
    assert sc.load(sc.save(model, tmp_path / "cnn.safetensors"))[12].bias is None


def test_tied_weights_are_saved(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    loaded = sc.load(
        sc.save(model, tmp_path / "tied.safetensors"), model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    )
    assert torch.equal(loaded[1].weight, model[0].weight)


def test_load_does_not_unpickle(saved, resnet, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load must not unpickle anything")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert same_function(sc.load(saved), resnet)


def test_metadata_is_plain_json(saved):
    meta = sc.read_metadata(saved)
    assert meta["format_version"] == 1  # no sparse tensor: the layout older versions read
    assert meta["sparse"] == {}
    assert meta["arch"] == {"name": "resnet20", "kwargs": {"num_classes": 10, "width": 4}}
    assert meta["modules"]["conv1"]["type"] == "Conv2d"
    assert meta["modules"]["bn1"]["config"]["num_features"] == 4
    assert meta["compression"] is None


def test_save_is_atomic_and_durable(resnet, saved, tmp_path, monkeypatch):
    """save writes through files.atomic_file: fsynced, and a failed write leaves the old file and no debris."""
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    path = sc.save(resnet, tmp_path / "m.safetensors")
    assert synced and sc.read_metadata(path) == sc.read_metadata(saved)
    old = path.read_bytes()
    monkeypatch.setattr(scio, "safetensors_bytes", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sc.save(sc.compress(resnet, 0.5), path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_extra_metadata(resnet, tmp_path):
    path = sc.save(resnet, tmp_path / "m.safetensors", metadata={"dataset": "digits"})
    assert sc.read_metadata(path)["dataset"] == "digits"
    with pytest.raises(ValueError, match="reserved"):
        sc.save(resnet, tmp_path / "m.safetensors", metadata={"arch": "x"})


# ---------------------------------------------------------------------------------------------------------
# Bad files: always CheckpointError (a ValueError) with a message, never KeyError/TypeError


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        sc.load(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("content", [b"", b"hello world, not a checkpoint", pickle.dumps({"a": 1}), b"\xff" * 64])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(sc.CheckpointError, match="not a readable safetensors file|is a PyTorch pickle"):
        sc.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(sc.CheckpointError, match="corrupt or truncated"):
        sc.load(path)


def test_corrupt_tensor_bytes(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor
    path = tmp_path / "flip.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(sc.CheckpointError, match="checksum"):
        sc.load(path)


def test_plain_safetensors_without_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(sc.CheckpointError, match="not a smoothcompress checkpoint"):
        sc.load(path)


def rewrite(saved, tmp_path, **changes):
    """A copy of the checkpoint with some metadata entries replaced (None deletes)."""
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": "99"}, "newer than this smoothcompress reads"),
        ({"format_version": "one"}, "not an integer"),
        ({"modules": "{not json"}, "not valid JSON"),
        ({"modules": None}, "'modules' is missing"),
        ({"modules": "[]"}, "must be a JSON object"),
        ({"arch": "null"}, "pass a skeleton"),
        ({"arch": '{"name": "resnet999", "kwargs": {}}'}, "cannot rebuild model 'resnet999'"),
        ({"arch": '{"name": "resnet20", "kwargs": {"depth": 3}}'}, "cannot rebuild model"),
        ({"arch": '"resnet20"'}, "must be"),
        ({"modules": '{"conv1": {"type": "ConvTranspose2d", "config": {}}}'}, "unknown type 'ConvTranspose2d'"),
        ({"modules": '{"conv1": {"type": "Conv2d", "config": {"in_channels": 3}}}'}, "cannot be rebuilt"),
        ({"modules": '{"conv1": {"type": "Conv2d"}}'}, "must have 'type' and 'config'"),
        (
            {"modules": '{"nowhere.conv": {"type": "Linear", "config": {"in_features": 2, "out_features": 2}}}'},
            "no parent",
        ),
        ({"arch": '{"name": "resnet20", "kwargs": {"width": 8}}', "modules": "{}"}, "do not fit the model"),
    ],
)
def test_damaged_metadata(saved, tmp_path, changes, match):
    path = rewrite(saved, tmp_path, **changes)
    with pytest.raises(sc.CheckpointError, match=match):
        sc.load(path)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(sc.CheckpointError, ValueError)


def test_mismatched_skeleton(saved):
    with pytest.raises(sc.CheckpointError, match="does not match the file"):
        sc.load(saved, model=UserNet())
    with pytest.raises(sc.CheckpointError, match="do not fit the model"):
        sc.load(saved, model=sc.create_model("resnet56", width=4))


def test_skeleton_of_another_width_is_rebuilt_from_the_records(saved, resnet):
    assert same_function(sc.load(saved, model=sc.create_model("resnet20", width=8)), resnet)


def test_channels_last_model_round_trips(tmp_path):
    """Training on GPU (and CPU) uses channels_last weights, which safetensors cannot store as they are."""
    model = sc.create_model("resnet20", width=4).eval().to(memory_format=torch.channels_last)
    loaded = sc.load(sc.save(model, tmp_path / "cl.safetensors")).eval()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

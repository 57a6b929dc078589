"""Compression method registry: every registered method is tested for free (apply, rate, record, save/load), plus
labels, options, the typed record and its reading of old files."""

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import smoothcompress as sc
from smoothcompress import methods
from smoothcompress import record as records
from smoothcompress.methods import option
from smoothcompress.record import CompressionRecord, compression_record, make_record
from smoothcompress.study.experiment import SweepConfig

METHODS = sc.list_methods()
RATE = 0.5
TOLERANCE = 0.02  # filter pruning reaches the rate to channel granularity (see smoothcompress.pruning)
X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
CALIBRATION = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # inputs for data-using methods


def _apply(method, model, rate, **kwargs):
    """``method.apply``, with calibration inputs for the methods that use data."""
    if method.uses_data():
        kwargs |= {"data": CALIBRATION, "images": 64}
    return method.apply(model, rate, **kwargs)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = sc.create_model("cnn", width=16)
    model(torch.randn(16, 1, 8, 8))  # training-mode pass: non-trivial BatchNorm statistics
    return model.eval()


@pytest.mark.parametrize("name", METHODS)
def test_every_method_applies_reaches_the_rate_and_records_it(cnn, name):
    method = sc.get_method(name)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    small = _apply(method, cnn, RATE)
    assert all(torch.equal(v, before[k]) for k, v in cnn.state_dict().items())  # the input is left alone
    params = sc.count_params(small, nonzero=method.nonzero)
    assert abs((1 - params / sc.count_params(cnn)) - RATE) <= TOLERANCE
    record = small.sc_compression
    assert isinstance(record, CompressionRecord)
    assert (record.method, record.label, record.options) == (name, method.label, method.options())
    assert record.rate_requested == RATE and record.nonzero == method.nonzero
    assert (record.params_before, record.params_after) == (sc.count_params(cnn), params)
    assert record.rate_achieved == pytest.approx(1 - params / sc.count_params(cnn))
    with torch.no_grad():
        assert small(X).shape == (4, 10)


@pytest.mark.parametrize("name", METHODS)
def test_every_record_round_trips_through_save_and_load(cnn, name, tmp_path):
    small = _apply(sc.get_method(name), cnn, RATE)
    path = sc.save(small, tmp_path / f"{name}.safetensors")
    loaded = sc.load(path)
    assert loaded.sc_compression == small.sc_compression
    assert sc.read_metadata(path)["compression"] == small.sc_compression.to_dict()
    with torch.no_grad():
        assert torch.equal(loaded(X), small(X))


@pytest.mark.parametrize("name", METHODS)
def test_every_method_reports_its_layers(cnn, name):
    method = sc.get_method(name)
    table = method.report(cnn, _apply(method, cnn, RATE), (1, 1, 8, 8))
    assert "total" in str(table) and table.to_dict()


@pytest.mark.parametrize("name", METHODS)
def test_every_option_is_declared_with_a_description(name):
    for f in sc.get_method(name).option_fields():
        assert f.metadata["doc"] and f.default is not dataclasses.MISSING, f.name


def test_labels_of_rows_are_unchanged():
    data_free = ("svd", "magnitude", "magnitude-layerwise", "filter")
    assert sc.list_methods()[:4] == data_free
    assert [sc.get_method(n).label for n in data_free] == ["svd-global-channel", *data_free[1:]]
    assert sc.get_method("svd", allocation="uniform", scheme="spatial").label == "svd-uniform-spatial"
    assert sc.get_method("svd", bn_aware=True, rank_multiple=16).label == "svd-global-channel-bn-x16"
    assert sc.list_methods("low-rank") == (
        "svd", "svd+bn", "svd-data", "svd-data+bn", "svd-seq", "svd-seq+bn", "svd-data-seq", "cp", "cp+bn", "cp-seq",
        "cp-seq+bn", "tucker", "tucker+bn", "tucker-seq", "tucker-seq+bn",
    )  # fmt: skip
    assert sc.get_method("cp-seq+bn", budget="flops").label == "cp-seq+bn-global-flops"
    assert sc.list_methods("pruning") == ("magnitude", "magnitude-layerwise", "filter", "magnitude+bn", "filter+bn")
    assert sc.get_method("svd-data+bn").label == "svd-data+bn-global-channel"


@pytest.mark.parametrize("name", METHODS)
def test_a_label_states_its_budget(name):
    budgets = methods.BUDGETS if "budget" in sc.get_method(name).options() else ("params",)
    for budget in budgets:
        method = sc.get_method(name, **({} if budget == "params" else {"budget": budget}))
        assert methods.label_budget(method.label) == budget
    assert methods.label_budget("dense") == "params"


def test_which_methods_use_data():
    uses = {n for n in METHODS if sc.get_method(n).uses_data()}
    low_rank = {"svd+bn", "svd-data", "svd-data+bn", "svd-seq", "svd-seq+bn", "svd-data-seq", "cp+bn", "tucker+bn"}
    low_rank |= {"cp-seq", "cp-seq+bn", "tucker-seq", "tucker-seq+bn"}
    assert uses == low_rank | {"magnitude+bn", "filter+bn"}
    with pytest.raises(ValueError, match="needs calibration data") as e:
        sc.get_method("svd-data").apply(sc.create_model("cnn", width=16), RATE)
    assert "\n" not in str(e.value)


def test_data_methods_record_their_calibration(cnn):
    small = _apply(sc.get_method("svd-data+bn"), cnn, RATE)
    details = small.sc_compression.details
    assert details["calibration"]["images"] == 64 and details["calibration"]["split"] == "given"
    assert details["bn_recalibration"] == {"images": 64, "split": "given"}
    pruned = _apply(sc.get_method("filter+bn"), cnn, RATE)
    assert pruned.sc_compression.method == "filter+bn" and "bn_recalibration" in pruned.sc_compression.details


def test_svd_options_reach_compress(cnn):
    small = sc.get_method("svd", scheme="spatial", rank_multiple=2).apply(cnn, RATE, exclude=["<last>"])
    record = small.sc_compression
    assert record.options == {
        "allocation": "global",
        "scheme": "spatial",
        "bn_aware": False,
        "rank_multiple": 2,
        "budget": "params",
    }
    assert all(rank % 2 == 0 for _, rank in record.details["ranks"].values())
    last = [n for n, m in cnn.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last in record.notes and type(small.get_submodule(last)) is torch.nn.Linear


def test_explicit_ranks_only(cnn):
    name = next(n for n, m in cnn.named_modules() if isinstance(m, torch.nn.Conv2d))
    small = sc.get_method("svd").apply(cnn, None, ranks={name: 2})
    assert small.sc_compression.rate_requested is None
    assert small.sc_compression.details["ranks"] == {name: ["channel", 2]}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("zip", {}, "unknown method 'zip'; choose from svd, magnitude"),
        ("svd", {"ranks": 3}, "no option ranks; it has options allocation, scheme"),
        ("filter", {"scheme": "channel"}, "no option scheme; it has no options"),
        ("svd", {"scheme": "diagonal"}, "scheme must be one of 'channel'"),
        ("svd", {"rank_multiple": "16"}, "rank_multiple must be of type int"),
        ("svd", {"rank_multiple": 0}, "positive"),
        ("svd", {"bn_aware": 1}, "bn_aware must be of type bool"),
    ],
)
def test_bad_methods_and_options_are_named(name, options, message):
    with pytest.raises(ValueError, match=message):
        sc.get_method(name, **options)


def test_method_from_a_config_entry():
    method = methods.method_from_dict({"method": "svd", "allocation": "energy", "scheme": "auto"})
    assert method == sc.get_method("svd", allocation="energy", scheme="auto")
    with pytest.raises(ValueError, match="needs a 'method'"):
        methods.method_from_dict({"allocation": "energy"})


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for a test that registers methods (the module keeps no public way to unregister)."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    monkeypatch.setattr(records, "_LABELS", dict(records._LABELS))


def test_a_new_method_is_one_registered_class(registry, cnn, tmp_path):
    """Registering a method makes it reachable by name, by sweep configs, by the CLI and in saved records."""

    @sc.register_method
    @dataclass(frozen=True)
    class HalfMagnitude(methods.Magnitude):
        """Magnitude pruning that asks for half the rate (a toy: it exists to test the registry)."""

        name: ClassVar[str] = "half-magnitude"
        factor: float = option(0.5, "fraction of the rate to prune")

        def apply(self, model, rate, *, exclude=(), input_shape=None):
            out = sc.prune(model, rate * self.factor, method="magnitude", exclude=exclude, input_shape=input_shape)
            out.sc_compression = make_record(self.name, model, out, rate, options=self.options(), nonzero=self.nonzero)
            return out

    assert "half-magnitude" in sc.list_methods("pruning")
    small = sc.get_method("half-magnitude").apply(cnn, 0.6)
    assert small.sc_compression.rate_achieved == pytest.approx(0.3, abs=1e-3)
    assert sc.load(sc.save(small, tmp_path / "m.safetensors")).sc_compression.options == {"factor": 0.5}
    cfg = SweepConfig.from_dict({"compress": {"methods": [{"method": "half-magnitude", "factor": 0.25}]}})
    assert cfg.methods == (HalfMagnitude(factor=0.25),)
    from smoothcompress.cli import build_parser

    args = build_parser().parse_args(["prune", "m.safetensors", "--method", "half-magnitude", "--factor", "0.1"])
    assert (args.method, args.option_factor) == ("half-magnitude", 0.1)


def test_register_refuses_duplicates_and_undeclared_options(registry):
    with pytest.raises(ValueError, match="already registered"):
        sc.register_method(methods.Filter)

    @dataclass(frozen=True)
    class Bare(methods.Method):
        name: ClassVar[str] = "bare"
        family: ClassVar[str] = "pruning"
        strength: float = 1.0  # no description

    with pytest.raises(ValueError, match="option 'strength' must be declared with option"):
        sc.register_method(Bare)
    with pytest.raises(ValueError, match="Method subclass"):
        sc.register_method(dict)


# ---------------------------------------------------------------------------------------------------------
# Reading a record back


FLAT = {  # a flat dict of compress's arguments, not a record
    "method": "svd",
    "rate": 0.5,
    "achieved_rate": 0.502,
    "allocation": "global",
    "scheme": "channel",
    "ranks": {"fc": ["channel", 3]},
}


def test_a_record_reads_back_and_a_flat_dict_is_refused():
    record = CompressionRecord(method="svd", options={"allocation": "global", "scheme": "channel"}, rate_requested=0.5)
    assert CompressionRecord.from_dict(record.to_dict()) == record
    assert record.label == "svd-global-channel"
    with pytest.raises(ValueError, match=r"^compression record has unknown key\(s\) achieved_rate, allocation, "):
        CompressionRecord.from_dict(FLAT)
    with pytest.raises(ValueError, match="unknown key"):
        CompressionRecord.from_dict({**record.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="'method' name"):
        CompressionRecord.from_dict([1, 2])


def _with_record(path, tmp_path, record):
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    out = tmp_path / "old.safetensors"
    save_file(tensors, str(out), metadata={**meta, "compression": json.dumps(record)})
    return out


def test_a_file_with_a_flat_record_is_refused_and_a_null_one_is_dense(cnn, tmp_path):
    small = sc.compress(cnn, RATE)
    path = sc.save(small, tmp_path / "new.safetensors")
    flat = {**FLAT, "ranks": small.sc_compression.details["ranks"]}
    with pytest.raises(sc.CheckpointError, match="not a compression record: compression record has unknown key"):
        sc.load(_with_record(path, tmp_path, flat))
    dense = sc.load(_with_record(sc.save(cnn, tmp_path / "d.safetensors"), tmp_path, None))
    assert not hasattr(dense, "sc_compression")
    with pytest.raises(sc.CheckpointError, match="not a compression record"):
        sc.load(_with_record(path, tmp_path, {"rate": 0.5}))


def test_a_saved_filter_pruned_model_says_how_it_was_pruned(cnn, tmp_path):
    path = sc.save(sc.prune(cnn, RATE, method="filter"), tmp_path / "filter.safetensors")
    record = sc.read_metadata(path)["compression"]
    assert record["method"] == "filter" and record["rate_requested"] == RATE and record["params_after"] > 0


def test_a_plain_dict_on_a_model_is_read_as_a_record(cnn):
    model = sc.create_model("cnn", width=16)
    record = CompressionRecord(method="svd", options={"scheme": "channel"}, rate_requested=0.5)
    model.sc_compression = record.to_dict()
    assert compression_record(model) == record
    model.sc_compression = dict(FLAT)
    with pytest.raises(ValueError, match="unknown key"):
        compression_record(model)
    assert compression_record(cnn) is None


def test_the_record_names_what_was_done(cnn):
    """compress with a calibration is svd-data; the report's footer names the registered method that ran."""
    x = torch.randn(64, 1, 8, 8)
    whitened = sc.compress(cnn, RATE, calibration=sc.calibrate(cnn, x, images=64))
    assert whitened.sc_compression.method == "svd-data"
    assert sc.compress(cnn, RATE).sc_compression.method == "svd"
    small = sc.get_method("svd+bn").apply(cnn, RATE, data=x, images=64)
    table = str(sc.get_method("svd+bn").report(cnn, small, (1, 1, 8, 8)))
    footer = [line for line in table.splitlines() if "removed" in line]
    assert footer and "svd+bn-global-channel" in footer[0]

"""Faults: hostile or damaged checkpoint files are refused before any large allocation; a process killed while
saving, exporting or appending rows leaves no partial file under the final name, and a rerun completes; a
truncated last line of a JSON-lines file is recovered, corruption elsewhere refused."""

import json
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import smoothcompress as sc
from smoothcompress.files import append_jsonl, read_jsonl

HUGE = st.integers(min_value=10**6, max_value=2**40)  # any two of these make a tensor of terabytes
SIZE = st.one_of(st.integers(-3, 40), HUGE, st.text(max_size=4), st.none(), st.lists(st.integers(-1, 4), max_size=3))
KNOWN = ["Linear", "Conv2d", "BatchNorm2d", "Embedding", "LayerNorm", "GroupNorm", "FactorizedLinear"]
KEYS = ["in_features", "out_features", "in_channels", "out_channels", "kernel_size", "num_features", "rank",
        "full_rank", "num_embeddings", "embedding_dim", "normalized_shape", "num_groups", "num_channels",
        "bias"]  # fmt: skip
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("faults")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the achieved rate of so small a model is coarse
        small = sc.compress(sc.create_model("mlp", width=16), 0.5)  # dense and factorized layers
    return sc.save(small, folder / "model.safetensors")


def metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def rewrite(saved, out, tensors=None, **meta) -> str:
    new = {**metadata(saved), **meta}
    save_file(tensors if tensors is not None else load_file(str(saved)), str(out), metadata=new)
    return out


def refused_or_loaded(path) -> None:
    """load either returns a model or refuses with the project's error; never another exception."""
    try:
        sc.load(path)
    except sc.CheckpointError as e:
        assert "\n" not in str(e).strip()


module_record = st.fixed_dictionaries(
    {
        "type": st.one_of(st.sampled_from(KNOWN), st.text(max_size=8)),
        "config": st.dictionaries(st.sampled_from(KEYS), SIZE),
    }
)
module_name = st.one_of(st.sampled_from(["1", "3", "5", "1.first", "", "..", "a.b.c"]), st.text(max_size=6))


@SETTINGS
@given(modules=st.dictionaries(module_name, module_record, max_size=3))
def test_hostile_module_records_are_refused_before_allocating(saved, tmp_path, modules):
    refused_or_loaded(rewrite(saved, tmp_path / "m.safetensors", modules=json.dumps(modules)))


@SETTINGS
@given(
    name=st.sampled_from(["mlp", "cnn", "resnet20", "no-such-model"]),
    kwargs=st.dictionaries(st.sampled_from(["width", "num_classes", "in_features", "in_channels"]), SIZE, max_size=3),
)
def test_hostile_architectures_are_refused_before_allocating(saved, tmp_path, name, kwargs):
    arch = json.dumps({"name": name, "kwargs": kwargs})
    refused_or_loaded(rewrite(saved, tmp_path / "m.safetensors", arch=arch, modules="{}"))


@SETTINGS
@given(
    key=st.sampled_from(["arch", "modules", "compression", "format_version", "weights_sha256", "format"]),
    value=st.one_of(st.text(max_size=20), st.just("{"), st.just("[]"), st.just("null"), st.just('{"a": 1}')),
)
def test_non_json_or_wrong_metadata_is_refused(saved, tmp_path, key, value):
    refused_or_loaded(rewrite(saved, tmp_path / "m.safetensors", **{key: value}))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 0.999))
def test_a_truncated_file_is_refused(saved, tmp_path, cut):
    data = saved.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises((sc.CheckpointError, FileNotFoundError)):
        sc.load(path)


def test_an_absurd_width_is_refused_by_the_stored_shapes(saved, tmp_path):
    arch = json.dumps({"name": "mlp", "kwargs": {"width": 10**6}})
    with pytest.raises(sc.CheckpointError, match="do not fit the model"):
        sc.load(rewrite(saved, tmp_path / "m.safetensors", arch=arch, modules="{}"))
    modules = json.loads(metadata(saved)["modules"])
    modules["1"]["config"].update(in_features=10**6, out_features=10**6, rank=10**5, full_rank=10**6)
    with pytest.raises(sc.CheckpointError, match="do not fit the model"):
        sc.load(rewrite(saved, tmp_path / "m.safetensors", modules=json.dumps(modules)))


def test_wrong_dtypes_are_refused(saved, tmp_path):
    tensors = load_file(str(saved))
    key = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[key] = tensors[key].to(torch.int32)
    path = rewrite(saved, tmp_path / "m.safetensors", tensors=tensors)
    meta = metadata(path)
    meta.pop("weights_sha256")  # a file without checksum: the dtype check alone must catch it
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(sc.CheckpointError, match=rf"{key}' is stored as torch.int32"):
        sc.load(path)


# ------------------------------------------------------------------------------------------------------------
# SIGKILL while writing

WRITER = textwrap.dedent(
    """
    import sys, time, torch, smoothcompress as sc
    from smoothcompress.files import append_jsonl
    kind, path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = sc.create_model("mlp", width=256)
    print("ready", flush=True)
    for i in range(10**6):
        if kind == "save":
            sc.save(model, path)
        elif kind == "export":
            sc.export_onnx(model, path, (1, 64))
        else:
            append_jsonl(path, {"i": i, "pad": "x" * 5000})
    """
)


def _killed(kind: str, path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("kind", "name", "delays"), [("save", "m.safetensors", (0.05, 0.3)), ("export", "m.onnx", (1.5,))]
)
def test_sigkill_leaves_the_old_file_or_the_new_one(tmp_path, kind, name, delays):
    path = tmp_path / name
    for delay in delays:
        _killed(kind, path, delay)
        final = [p for p in tmp_path.iterdir() if p.name == name]
        if final:  # a complete file, or none at all
            if kind == "save":
                sc.load(path)
            else:
                ort = pytest.importorskip("onnxruntime")
                ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # a rerun completes (leftover temporaries of the killed process do not block it)
    model = sc.create_model("mlp", width=16)
    sc.save(model, path) if kind == "save" else sc.export_onnx(model, path, (1, 64))
    assert path.stat().st_size > 0 and not (tmp_path / (name + ".data")).exists()


def test_sigkill_while_appending_rows_loses_at_most_the_row_in_flight(tmp_path):
    path = tmp_path / "results.jsonl"
    _killed("append", path, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = read_jsonl(path)
    assert rows and [r["i"] for r in rows] == list(range(len(rows)))
    append_jsonl(path, {"i": len(rows), "pad": ""})  # the rerun appends after the last complete row
    assert [r["i"] for r in read_jsonl(path)] == list(range(len(rows) + 1))


KILLED_SWEEP = {
    "out": "unused",
    "train": {"dataset": "digits", "model": "mlp", "width": 64, "epochs": 2, "batch_size": 128, "device": "cpu"},
    "grid": {"seeds": [0, 1], "regularizers": [{"kind": "none"}]},
    "compress": {"rates": [0.5, 0.8], "methods": [{"method": "svd"}, {"method": "magnitude"}]},
}

STUDY = textwrap.dedent(
    """
    import json, sys
    from smoothcompress.study.experiment import SweepConfig, sweep
    from smoothcompress.study.report import write_report
    kind, out, raw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print("ready", flush=True)
    if kind == "sweep":
        sweep(SweepConfig.from_dict(raw, out=out))
    else:
        for _ in range(10**6):
            write_report(out, out + "/report")
    """
)


def _killed_study(kind: str, out, delay: float) -> None:
    args = [sys.executable, "-c", STUDY, kind, str(out), json.dumps(KILLED_SWEEP)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _no_partial_files(folder) -> None:
    """Every model file under its final name loads (a killed writer leaves at most a ``*.part`` temporary)."""
    for p in folder.rglob("*.safetensors"):
        sc.load(p)


@pytest.mark.timeout(180)
def test_sigkill_during_a_sweep_and_its_report_then_reruns_complete(tmp_path):
    from smoothcompress.study.experiment import SweepConfig, sweep
    from smoothcompress.study.report import write_report

    out = tmp_path / "sweep"
    _killed_study("sweep", out, 3.0)  # killed while training or compressing
    _no_partial_files(out)
    results = sweep(SweepConfig.from_dict(KILLED_SWEEP, out=out))  # the rerun resumes and completes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = read_jsonl(results)
    keys = [(r["run"], r["label"], r["rate_requested"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * (1 + 2 * 2)  # every cell once
    write_report(out, out / "report")
    _killed_study("report", out, 2.0)  # killed while rewriting the report
    for name in ("report.md", "summary.md", "accuracy.png"):
        assert (out / "report" / name).stat().st_size > 0  # the old file or the new one, never a partial one
    assert "# smoothcompress report" in (out / "report" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------------------
# JSON lines


def test_a_truncated_last_line_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: ignored a truncated last line"):
        assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


@pytest.mark.parametrize(
    "content", ['{"a": 1}\n{"a"\n{"a": 2}\n', '{"a": 1}\n[1, 2]\n', b'{"a": 1}\n\xff\xfe\n{"a": 2}\n']
)
def test_corruption_before_the_last_line_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "results.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(sc.FileContentError, match=r"results.jsonl:2: "):
        read_jsonl(path)
    assert sc.cli.main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.jsonl:2" in err


SWEEP = (
    '[train]\ndataset = "digits"\nmodel = "mlp"\nwidth = 16\nepochs = 1\ndevice = "cpu"\n'
    '[compress]\nrates = [0.5]\nmethods = [{ method = "svd" }]\n'
)


def test_sweep_resumes_after_truncated_results_and_metrics(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    out = tmp_path / "sw"
    results = sc.sweep(cfg, out=out)
    rows = read_jsonl(results)
    (metrics,) = out.glob("runs/*/metrics.jsonl")
    for path in (results, metrics):  # a killed writer's half line at the end of each
        with open(path, "ab") as f:
            f.write(b'{"run": "half')
    cfg.write_text(SWEEP.replace("rates = [0.5]", "rates = [0.5, 0.7]"))  # the rerun adds one cell
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sc.sweep(cfg, out=out) == results
    assert any("truncated last line" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torn line was dropped before the new row was appended
        after = read_jsonl(results)
    assert after[: len(rows)] == rows and [r["rate_requested"] for r in after[len(rows) :]] == [0.7]

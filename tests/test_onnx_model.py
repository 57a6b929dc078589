"""OnnxModel and evaluate(path): an ONNX file, float or int8, run by onnxruntime as a torch module; its record read
back; the same accuracy as counting its outputs by hand; clear errors, and a one-line error without onnxruntime."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import smoothcompress as sc

ort = pytest.importorskip("onnxruntime")

SHAPE = (1, 1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return sc.load_dataset("digits")


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    """A small compressed CNN, its float export and its int8 file (calibrated on the digits' training split)."""
    torch.manual_seed(0)
    small = sc.compress(sc.create_model("cnn", width=16).eval(), 0.5)
    folder = tmp_path_factory.mktemp("onnx")
    float_path = sc.export_onnx(small, folder / "small.onnx", SHAPE)
    int8_path = sc.export_onnx(small, folder / "small-int8.onnx", SHAPE, int8=True, calibration=digits)
    return small, float_path, int8_path


def test_float_file_computes_the_model(files):
    small, float_path, _ = files
    model = sc.OnnxModel(float_path, threads=1)
    x = torch.randn(5, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = small(x)
    got = model(x)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (5, 10)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert model(input=x.double()).shape == (5, 10)  # by name; float64 converted to the graph's float32
    assert model.input_names == ["input"] and model.output_names == ["output"]
    assert model.quantization is None and not hasattr(model, "sc_compression")  # a float export has no record
    assert list(model.parameters()) == []


def test_files_hold_no_exporter_debug_metadata(files):
    import onnx

    for path in files[1:]:
        proto = onnx.load(str(path))
        assert all(len(node.metadata_props) == 0 for node in proto.graph.node), path.name
        assert b"stack_trace" not in path.read_bytes() and b'File "' not in path.read_bytes()


def test_int8_file_carries_its_record(files):
    small, _, int8_path = files
    model = sc.OnnxModel(int8_path)
    assert model.quantization == {"mode": "static", "per_channel": True, "calibration_images": 256, "split": "train"}
    assert model.sc_compression == small.sc_compression


@pytest.mark.parametrize("which", [1, 2])
def test_evaluate_a_file_counts_its_outputs(files, digits, which):
    path = files[which]
    acc = sc.evaluate(path, digits)
    assert sc.evaluate(str(path), digits, batch_size=7) == acc  # a str path, batches of 7
    # by hand: the test split normalised with the dataset's mean and std, through onnxruntime
    x = (digits.x_test.float() / 255 - torch.tensor(digits.mean).view(1, -1, 1, 1)) / torch.tensor(digits.std).view(
        1, -1, 1, 1
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["output"], {"input": x.numpy()})[0]
    expected = float((logits.argmax(1) == digits.y_test.numpy()).mean())
    assert acc == pytest.approx(expected, abs=1e-12)


def test_command_line_evaluates_a_file(files, capsys):
    from smoothcompress.cli import main

    _, float_path, int8_path = files
    assert main(["evaluate", str(int8_path), "--dataset", "digits"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy on digits (onnxruntime, int8 static, 256 calibration images)" in out
    assert main(["evaluate", str(float_path), "--dataset", "digits"]) == 0
    assert "(onnxruntime, float)" in capsys.readouterr().out
    assert main(["evaluate", str(float_path), "--dataset", "digits", "--model-factory", "m:f"]) == 2
    assert "--model-factory applies to .safetensors files" in capsys.readouterr().err


def test_errors(files, digits, tmp_path):
    _, float_path, _ = files
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        sc.OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(sc.FileContentError, match="not an ONNX model onnxruntime can run"):
        sc.OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(sc.ConfigError, match="threads must be an integer of at least 1"):
        sc.OnnxModel(float_path, threads=0)
    model = sc.OnnxModel(float_path)
    x = torch.randn(2, *SHAPE[1:])
    with pytest.raises(sc.ConfigError, match=r"takes 1 input\(s\) \(input\), got 2 positional"):
        model(x, x)
    with pytest.raises(sc.ConfigError, match="has no input 'images'"):
        model(images=x)
    with pytest.raises(sc.ConfigError, match="needs input"):
        model()
    with pytest.raises(sc.ConfigError, match=r"cannot run on input \(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(sc.ConfigError, match="not model.safetensors; load a checkpoint first"):
        sc.evaluate(tmp_path / "model.safetensors", digits)
    cifar_like = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.int64))]
    with pytest.raises(sc.ConfigError, match="cannot take the 3x32x32 inputs"):
        sc.evaluate(float_path, cifar_like)


def test_linear_model_with_dynamic_int8(tmp_path):
    torch.manual_seed(0)
    mlp = sc.create_model("mlp", width=16).eval()
    path = sc.export_onnx(mlp, tmp_path / "mlp-int8.onnx", SHAPE, int8="dynamic")
    model = sc.OnnxModel(path)
    assert model.quantization["mode"] == "dynamic"
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        ref = mlp(x)
    assert model(x).shape == ref.shape
    assert isinstance(model, nn.Module)
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())  # deterministic


BLOCKED = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "onnxruntime":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
import torch, smoothcompress as sc
from smoothcompress.extras import MissingExtra
model = sc.create_model("cnn", width=4)
for name, call in {
    "int8": lambda: sc.export_onnx(model, "x.onnx", (1, 1, 8, 8), int8=True, calibration=torch.randn(4, 1, 8, 8)),
    "run": lambda: sc.OnnxModel("x.onnx"),
    "evaluate": lambda: sc.evaluate("x.onnx", [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))]),
}.items():
    try:
        call()
    except MissingExtra as e:
        print(name, "|", e)
"""


def test_without_onnxruntime_the_error_names_the_extra(tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split(" |")[0] for line in lines] == ["int8", "run", "evaluate"], out.stdout
    assert all("'onnxruntime'" in line and "pip install 'smoothcompress[onnx]'" in line for line in lines), lines
    assert not (tmp_path / "x.onnx").exists()

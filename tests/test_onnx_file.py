"""export_onnx writes one self-contained file, atomically, and the command line's export prints nothing on stderr."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import smoothcompress as sc
from smoothcompress import onnxfile

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return sc.create_model("cnn", width=8).eval()


def test_one_file_with_the_weights_inside(cnn, tmp_path):
    path = sc.export_onnx(cnn, tmp_path / "m.onnx", (1, 1, 8, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no m.onnx.data, no temporary left
    x = torch.randn(3, 1, 8, 8)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, cnn(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_failed_export_keeps_the_old_file(cnn, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        sc.export_onnx(cnn, path, (1, 1, 8, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and path.read_bytes() == b"old"


def test_only_the_known_harmless_messages_are_dropped():
    with pytest.warns(UserWarning, match="something else"), onnxfile._quiet_exporter():
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)


def test_cli_export_of_a_registry_model_prints_nothing_on_stderr(cnn, tmp_path):
    sc.save(cnn, tmp_path / "m.safetensors")
    argv = [sys.executable, "-m", "smoothcompress", "export", str(tmp_path / "m.safetensors"), "-o", "m.onnx"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == "wrote m.onnx\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.safetensors"]

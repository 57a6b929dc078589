"""export_onnx: onnxruntime reproduces PyTorch for dense and compressed models, with a dynamic batch."""

import numpy as np
import pytest
import torch

import smoothcompress as sc

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    return session.run(["output"], {"input": x.numpy()})[0]


def assert_matches(model, path, x):
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = run_onnx(path, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = sc.create_model("cnn", width=16)
    model(torch.randn(16, 1, 8, 8))  # training-mode pass: non-trivial BatchNorm statistics
    return model.eval()


def test_dense_model(cnn, tmp_path):
    cnn.train()
    try:
        path = sc.export_onnx(cnn, tmp_path / "dense.onnx", (1, 1, 8, 8))
        assert cnn.training  # exported in eval mode, training flag restored
    finally:
        cnn.eval()
    assert_matches(cnn, path, torch.randn(5, 1, 8, 8))  # exported with batch 1, run with batch 5


def test_compressed_model(cnn, tmp_path):
    small = sc.compress(cnn, 0.6)
    path = sc.export_onnx(small, tmp_path / "small.onnx", (1, 1, 8, 8))
    assert_matches(small, path, torch.randn(3, 1, 8, 8))


def test_spatially_compressed_resnet(tmp_path):
    torch.manual_seed(0)
    small = sc.compress(sc.create_model("resnet20", width=4).eval(), 0.5, scheme="spatial")
    path = sc.export_onnx(small, tmp_path / "resnet.onnx", (2, 3, 32, 32), dynamic_batch=False)
    assert_matches(small, path, torch.randn(2, 3, 32, 32))


def test_bad_input_shape(cnn, tmp_path):
    with pytest.raises(ValueError, match="batch dimension"):
        sc.export_onnx(cnn, tmp_path / "m.onnx", (8,))
    with pytest.raises(ValueError, match="positive"):
        sc.export_onnx(cnn, tmp_path / "m.onnx", (0, 1, 8, 8))

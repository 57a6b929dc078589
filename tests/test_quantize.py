"""quantize_onnx / export_onnx(int8=...): int8 files of dense, compressed and pruned models run in onnxruntime,
are smaller than the float export, agree with the float model, and carry their record; clear errors."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import smoothcompress as sc

ort = pytest.importorskip("onnxruntime")

SHAPE = (1, 1, 8, 8)
# int8 rounding moves each weight by at most half a step of 1/127 of its channel's range, each activation by half a
# step of 1/255 of its calibrated range: about 0.5% relative error per layer, 0.6% measured at the output of these
# five-layer models. The bounds leave room for error growth through the layers (relative L2 error <= 5%); top-1
# changes only for inputs whose two largest logits are closer than that error.
MAX_RELATIVE_ERROR = 0.05
MIN_TOP1_AGREEMENT = 0.90


def calibration_inputs(n: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *SHAPE[1:], generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn():
    """Conv2d+BatchNorm+ReLU blocks and two Linear layers, 65,514 parameters, 8x8 inputs."""
    torch.manual_seed(0)
    model = sc.create_model("cnn", width=32)
    model.train()
    with torch.no_grad():
        model(calibration_inputs(64, seed=2))  # non-trivial BatchNorm statistics
    return model.eval()


def onnx_bytes(path) -> int:
    """Bytes of an ONNX file and of its external data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x.numpy()})[0]


def agreement(model: nn.Module, path, n: int = 128) -> tuple[float, float]:
    """Top-1 agreement and relative L2 error of the int8 file against the float model on n random inputs."""
    x = calibration_inputs(n, seed=3)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = run(path, x)
    assert got.shape == ref.shape
    top1 = float((got.argmax(1) == ref.argmax(1)).mean())
    return top1, float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("kind", ["dense", "svd-0.5", "magnitude-0.5"])
def test_static_int8_is_smaller_and_agrees(cnn, kind, tmp_path):
    model = {
        "dense": lambda: cnn,
        "svd-0.5": lambda: sc.compress(cnn, 0.5),
        "magnitude-0.5": lambda: sc.prune(cnn, 0.5, method="magnitude"),
    }[kind]()
    float_path = sc.export_onnx(model, tmp_path / "float.onnx", SHAPE)
    path = sc.quantize_onnx(model, tmp_path / "int8.onnx", calibration_inputs())
    assert path == tmp_path / "int8.onnx" and path.is_file()
    assert not path.with_name("int8.onnx.data").exists()  # one self-contained file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["float.onnx", "int8.onnx"]  # both self-contained
    assert sc.read_onnx_record(float_path) is None  # a float export carries no record
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(path)
    assert onnx_bytes(path) < 0.5 * onnx_bytes(float_path)
    top1, rel = agreement(model, path)
    assert top1 >= MIN_TOP1_AGREEMENT and rel <= MAX_RELATIVE_ERROR, (top1, rel)
    # the batch dimension stays dynamic
    assert run(path, calibration_inputs(5, seed=4)).shape == (5, 10)


def test_record_round_trips(cnn, tmp_path):
    small = sc.compress(cnn, 0.5)
    path = sc.quantize_onnx(small, tmp_path / "int8.onnx", calibration_inputs(100), images=80, per_channel=False)
    record = sc.read_onnx_record(path)
    assert record["compression"] == small.sc_compression
    quantization = {"mode": "static", "per_channel": False, "calibration_images": 80, "split": "given"}
    assert record["quantization"] == quantization
    raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(raw["smoothcompress"])["compression"]["method"] == "svd"
    # a dense model has no compression record
    assert sc.read_onnx_record(sc.quantize_onnx(cnn, tmp_path / "d.onnx", calibration_inputs()))["compression"] is None


def test_export_onnx_int8_calibrates_on_the_training_split(tmp_path):
    torch.manual_seed(0)
    model = sc.create_model("cnn", width=8).eval()
    data = sc.load_dataset("digits")
    path = sc.export_onnx(model, tmp_path / "int8.onnx", SHAPE, int8=True, calibration=data)
    assert sc.read_onnx_record(path)["quantization"] == {
        "mode": "static",
        "per_channel": True,
        "calibration_images": 256,
        "split": "train",
    }
    assert run(path, calibration_inputs(3)).shape == (3, 10)


def test_dynamic_int8_of_an_mlp(tmp_path):
    torch.manual_seed(0)
    mlp = sc.create_model("mlp").eval()  # 85,002 parameters, all in Linear layers
    float_path = sc.export_onnx(mlp, tmp_path / "float.onnx", SHAPE)
    path = sc.quantize_onnx(mlp, tmp_path / "int8.onnx", mode="dynamic")  # input shape from the registry
    assert "MatMulInteger" in op_types(path) and not {"Gemm", "MatMul"} & op_types(path)
    assert onnx_bytes(path) < 0.5 * onnx_bytes(float_path)
    top1, rel = agreement(mlp, path)
    assert top1 >= MIN_TOP1_AGREEMENT and rel <= MAX_RELATIVE_ERROR, (top1, rel)
    assert sc.read_onnx_record(path)["quantization"] == {
        "mode": "dynamic",
        "per_channel": True,
        "calibration_images": 0,
        "split": None,
    }
    same = sc.export_onnx(mlp, tmp_path / "same.onnx", SHAPE, int8="dynamic")
    np.testing.assert_array_equal(run(same, calibration_inputs(4)), run(path, calibration_inputs(4)))


def test_errors(cnn, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(ValueError, match="needs calibration data"):
        sc.quantize_onnx(cnn, out)
    with pytest.raises(ValueError, match="needs calibration data"):
        sc.export_onnx(cnn, out, SHAPE, int8=True)
    with pytest.raises(ValueError, match=r"shape \(16, 3, 8, 8\) do not fit the model"):
        sc.quantize_onnx(cnn, out, torch.randn(16, 3, 8, 8))
    with pytest.raises(ValueError, match="float tensor"):
        sc.quantize_onnx(cnn, out, torch.zeros(16, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="per sample but input_shape"):
        sc.quantize_onnx(cnn, out, calibration_inputs(8), input_shape=(1, 1, 16, 16))
    with pytest.raises(ValueError, match="Linear layers and the model has none"):
        sc.quantize_onnx(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), out, mode="dynamic", input_shape=SHAPE)
    with pytest.raises(ValueError, match="nothing to quantize"):
        sc.quantize_onnx(nn.Sequential(nn.ReLU()), out, calibration_inputs(8))
    with pytest.raises(ValueError, match="reads no calibration data"):
        sc.quantize_onnx(cnn, out, calibration_inputs(8), mode="dynamic")
    with pytest.raises(ValueError, match="mode must be one of"):
        sc.quantize_onnx(cnn, out, calibration_inputs(8), mode="int4")
    with pytest.raises(ValueError, match="int8 must be"):
        sc.export_onnx(cnn, out, SHAPE, int8="int4")
    with pytest.raises(ValueError, match="needs an input_shape"):
        sc.quantize_onnx(nn.Sequential(nn.Linear(4, 2)), out, mode="dynamic")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_read_onnx_record_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        sc.read_onnx_record(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        sc.read_onnx_record(tmp_path / "junk.onnx")

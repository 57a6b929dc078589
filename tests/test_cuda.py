"""Compression on a CUDA device: every data-aware method runs with the model and its calibration data on the GPU
and gives what it gives on the CPU. Skipped without CUDA (run on a GPU machine: `pytest tests/test_cuda.py`)."""

from __future__ import annotations

import copy

import pytest
import torch

import smoothcompress as sc

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RATE = 0.7
# methods whose result is a function of the weights and data alone (no random initialisation of a decomposition)
EXACT = ["svd+bn", "svd-data+bn", "svd-seq", "svd-seq+bn", "magnitude+bn"]
# CP and Tucker start their alternating least squares from random factors, drawn on the device
RANDOM = ["cp-seq+bn", "tucker-seq+bn"]


def _model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = sc.create_model("resnet18", width=8, num_classes=10).eval()
    x = torch.randn(128, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, x


def _both(name: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """``(dense, on_cpu, on_gpu, x)``: the dense model, compressed by ``name`` on each device, and its data."""
    model, x = _model_and_data()
    method = sc.get_method(name)
    on_cpu = method.apply(copy.deepcopy(model), RATE, data=x, images=len(x))
    on_gpu = method.apply(copy.deepcopy(model).cuda(), RATE, data=x.cuda(), images=len(x))
    return model, on_cpu, on_gpu, x


@pytest.fixture(autouse=True)
def _full_float32():
    """TF32 off, so that the CPU and the GPU compute the same float32 products."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("name", EXACT)
def test_a_method_on_the_gpu_gives_the_cpu_result(name):
    _, on_cpu, on_gpu, x = _both(name)
    assert all(p.is_cuda for p in on_gpu.parameters())
    assert sc.count_params(on_gpu) == sc.count_params(on_cpu)
    with torch.no_grad():
        want, got = on_cpu(x), on_gpu(x.cuda()).cpu()
    assert float((got - want).norm() / want.norm()) < 1e-3


@pytest.mark.parametrize("name", RANDOM)
def test_a_tensor_method_runs_on_the_gpu_as_well_as_on_the_cpu(name):
    pytest.importorskip("tensorly")
    model, on_cpu, on_gpu, x = _both(name)
    assert all(p.is_cuda for p in on_gpu.parameters())
    assert sc.count_params(on_gpu) == sc.count_params(on_cpu)
    with torch.no_grad():
        want = model(x)
        err_cpu = float((on_cpu(x) - want).norm() / want.norm())
        err_gpu = float((on_gpu(x.cuda()).cpu() - want).norm() / want.norm())
    assert err_gpu < 1.5 * err_cpu + 1e-3  # other random starts, the same quality

"""The core flow with none of the extras: penalty, compress, reconstruct, save, load, magnitude pruning.

Run by tests/test_light_install.py with the optional packages blocked, and by `make check-light` in a fresh
virtual environment holding only the core dependencies. Prints one line per step; exits non-zero on failure.
"""

import tempfile
from pathlib import Path

import torch

import smoothcompress as sc
from smoothcompress.extras import MissingExtra

torch.manual_seed(0)
model = sc.create_model("cnn", num_classes=10, width=16)  # a registry model: its file rebuilds it
x = torch.randn(64, 1, 8, 8)
loss = model(x).square().mean() + sc.Smoothness("nuclear", 1e-3)(model)
loss.backward()
print("penalty ok")
small = sc.compress(model.eval(), 0.6)
sc.reconstruct(model, small, x, images=64)
print("compress + reconstruct ok")
pruned = sc.prune(model, 0.5, method="magnitude")
print("magnitude pruning ok")
with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "small.safetensors"
    sc.save(small, path)
    again = sc.load(path).eval()
    assert torch.equal(again(x), small(x))
print("save + load ok")
for name, call in {
    "filter pruning": lambda: sc.prune(model, 0.5, method="filter"),
    "onnx export": lambda: sc.export_onnx(small, Path(tempfile.gettempdir()) / "light.onnx", (1, 1, 8, 8)),
}.items():
    try:
        call()
    except MissingExtra as e:
        assert "pip install 'smoothcompress[" in str(e) and "\n" not in str(e), e
        print(f"{name}: {e}")
    else:
        print(f"{name} ok (its extra is installed)")

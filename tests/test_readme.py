"""The README's Python blocks run, on tiny settings, so the documentation cannot drift from the API."""

import re
from pathlib import Path

import pytest

from smoothcompress.study import experiment

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

TINY = {  # README text -> what the test runs instead; each must be in the README, so a changed example fails here
    'create_model("resnet18", num_classes=10, width=64)': 'create_model("resnet18", num_classes=10, width=4)',
    "epochs=20": "epochs=1",
}

TINY_DEMO = """
out = "runs/demo"
[train]
dataset = "digits"
model = "mlp"
width = 32
epochs = 1
device = "cpu"
[grid]
regularizers = [{ kind = "none" }, { kind = "nuclear", weight = 0.01 }]
[compress]
rates = [0.5]
methods = [{ method = "svd" }, { method = "magnitude" }]
"""


def test_the_readme_has_its_python_blocks():
    assert len(BLOCKS) >= 3
    text = "".join(BLOCKS)
    for original in TINY:
        assert original in text, f"the README no longer says {original!r}: update TINY"


def test_the_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    """Blocks run in order in one namespace, as in one session, in an empty folder; the demo preset is shrunk."""
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "demo.toml").write_text(TINY_DEMO)
    monkeypatch.setattr(experiment, "PRESETS_DIR", presets)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict = {}
    for i, block in enumerate(BLOCKS):
        for original, tiny in TINY.items():
            block = block.replace(original, tiny)
        try:
            exec(compile(block, f"{README.name} python block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block in the failure
            pytest.fail(f"README python block {i + 1} fails: {type(e).__name__}: {e}")
    assert (work / "small.safetensors").exists() and (work / "small.onnx").stat().st_size > 1000
    assert (work / "runs" / "demo" / "report" / "report.md").exists()
    assert (work / "runs" / "mlp" / "model.safetensors").exists()
    out = capsys.readouterr().out
    assert "svd-global-channel" in out and "filter" in out and "test accuracy" in out

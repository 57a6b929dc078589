"""The core runs without the extras: the light flow with every optional package blocked from import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FLOW = Path(__file__).with_name("light_flow.py")
OPTIONAL = ("matplotlib", "onnx", "onnxruntime", "onnxscript", "torch_pruning", "sklearn", "PIL", "tomli_w",
            "transformers")  # fmt: skip

BLOCKER = f"""
import importlib.abc, runpy, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
runpy.run_path({str(FLOW)!r}, run_name="__main__")
"""


@pytest.mark.timeout(120)
def test_core_flow_without_extras():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert {"penalty ok", "compress + reconstruct ok", "magnitude pruning ok", "save + load ok"} <= set(lines)
    assert any(line.startswith("filter pruning:") and "smoothcompress[prune]" in line for line in lines)
    assert any(line.startswith("onnx export:") and "smoothcompress[onnx]" in line for line in lines)


def test_missing_extra_is_one_line():
    from smoothcompress.extras import MissingExtra, require

    with pytest.raises(MissingExtra, match=r"pip install 'smoothcompress\[report\]'") as e:
        require("no_such_package_for_the_test", "report")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown extra"):
        require("os", "no-such-extra")

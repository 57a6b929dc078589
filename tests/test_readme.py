"""The README's Python blocks run, on tiny settings, so the front page cannot drift from the API (the guides'
blocks are run by tests/test_docs.py)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

TINY = {  # README text -> what the test runs instead; each must be in the README, so a changed example fails here
    'create_model("resnet18", num_classes=10, width=16)': 'create_model("resnet18", num_classes=10, width=4)',
}


def test_the_readme_has_its_python_block():
    assert BLOCKS
    text = "".join(BLOCKS)
    for original in TINY:
        assert original in text, f"the README no longer says {original!r}: update TINY"


def test_the_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    """Blocks run in order in one namespace, as in one session, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(BLOCKS):
        for original, tiny in TINY.items():
            block = block.replace(original, tiny)
        try:
            exec(compile(block, f"{README.name} python block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block in the failure
            pytest.fail(f"README python block {i + 1} fails: {type(e).__name__}: {e}")
    assert (tmp_path / "small.safetensors").exists()
    assert "svd-seq-global-channel" in capsys.readouterr().out  # the report names the method that ran

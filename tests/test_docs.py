"""The documentation site: every Python block of the guides runs, and ``mkdocs build --strict`` passes.

Each page under ``docs/guides/`` runs its ```python blocks in order in one namespace, as one session would, in an
empty working directory. An HTML comment ``<!-- skip -->`` on the line before a block leaves that block out (for a
block that needs a GPU, say); ``<!-- requires: MODULE -->`` anywhere on a page skips the page when ``MODULE``
cannot be imported (e.g. ``transformers``).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
BLOCK = re.compile(r"^(<!-- skip -->\n)?```python\n(.*?)^```", flags=re.S | re.M)
REQUIRES = re.compile(r"<!-- requires: ([\w.]+) -->")


def blocks(page: Path) -> list[str]:
    """The page's Python blocks that run, in order."""
    return [code for skip, code in BLOCK.findall(page.read_text()) if not skip]


def test_every_guide_has_python_blocks():
    assert len(GUIDES) >= 10, "docs/guides/ lost pages"
    for page in GUIDES:
        assert blocks(page) or "```bash" in page.read_text(), f"{page.name} shows no code"


@pytest.mark.parametrize("page", GUIDES, ids=[p.stem for p in GUIDES])
def test_the_guide_python_blocks_run(page, tmp_path, monkeypatch):
    for module in REQUIRES.findall(page.read_text()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{page.name} needs `{module}`, which is not installed")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(blocks(page), 1):
        try:
            exec(compile(code, f"docs/guides/{page.name} python block {i}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the page and block in the failure
            pytest.fail(f"docs/guides/{page.name} python block {i} fails: {type(e).__name__}: {e}")


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: no warning (broken link, docstring the API reference cannot parse, ...)."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip("the site needs mkdocs-material and mkdocstrings-python (pip install -e '.[dev]')")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # no banner about a successor project
        timeout=240,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "api" / "compression").is_dir()

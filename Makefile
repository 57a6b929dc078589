# The two commands a new user needs: `make test` and `make demo` (`make docs` builds the documentation site).
# Both create .venv when it is missing. torch==2.13.0 is installed first and on its own: it is the CPU build
# kept on this machine's disk, and installing it before the package means pip never resolves a bare `torch`
# requirement to a multi-GB CUDA wheel.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: test demo docs install bench clean check-light

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports  # the layers and no import cycles (contracts in pyproject.toml)
	$(PY) -m pytest

# The core install alone: a fresh venv with torch and `pip install .` (no extras), then the core flow.
check-light:
	rm -rf .venv-light
	$(PYTHON) -m venv .venv-light
	.venv-light/bin/python -m pip install --quiet $(TORCH)
	.venv-light/bin/python -m pip install --quiet .
	.venv-light/bin/python -m pip list --format=freeze  # the bare install: torch, the core four, their needs
	.venv-light/bin/python tests/light_flow.py
	rm -rf .venv-light

demo: $(STAMP)
	$(VENV)/bin/smoothcompress demo

# The site (mkdocs.yml: guides, API reference from the docstrings) into site/; offline, warnings are errors.
# `make test` checks the same build (tests/test_docs.py).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .venv-light build site src/*.egg-info .pytest_cache .ruff_cache .import_linter_cache

# The two commands a new user needs: `make test` and `make demo` (`make docs` builds the documentation site).
# Both create .venv when it is missing. torch==2.13.0 is installed first and on its own: it is the CPU build
# kept on this machine's disk, and installing it before the package means pip never resolves a bare `torch`
# requirement to a multi-GB CUDA wheel.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: test demo docs install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/smoothcompress demo

# The site (mkdocs.yml: guides, API reference from the docstrings) into site/; offline, warnings are errors.
# `make test` checks the same build (tests/test_docs.py).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .ruff_cache

# Quick start: `make demo` (set up and run a scrub), `make test` (set up and run every test, as CI
# does), `make check` (the fast tier: lint, types and the tests that take seconds).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test check extras notebooks clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# tracr: auto-circuit's compiled models, so that CI runs tests/test_tracr.py
	$(PY) -m pip install --quiet -e '.[test,tracr]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/causal-scrub run paren --out runs/paren --force

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(PY) -m pytest

# The fast tier (tests/conftest.py): no full-size scrubs, training, Ray, browser or extras, and
# property tests with a fifth of their examples.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	CAUSAL_SCRUB_FAST=1 $(PY) -m pytest -m "not slow and not ray and not training and not browser and not extras"

# The tutorials (jupytext percent-format .py files, the source) as .ipynb copies that open in
# Jupyter or Colab; tests/test_tutorials.py checks the copies match their sources.
notebooks: $(VENV)/.installed
	$(VENV)/bin/jupytext --to ipynb --update-metadata '{"jupytext": null}' docs/tutorials/*.py

# Each optional extra installed alone into a fresh environment, and one command run through it.
extras:
	./.ci/extras

clean:
	rm -rf $(VENV) runs .pytest_cache

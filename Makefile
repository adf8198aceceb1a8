# Quick start: `make demo` (set up and run a scrub), `make test` (set up and run the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint clean

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

clean:
	rm -rf $(VENV) runs .pytest_cache

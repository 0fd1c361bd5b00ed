# One-command setup: `make run` and `make test` install on first use.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
RELIABILITY_ROUNDS ?= 0

.PHONY: install run test test-fast test-reliability lint bench test-tools clean demo-weights

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so no multi-GB CUDA build is pulled by a looser requirement
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/diff3m serve $(if $(CONFIG),--config $(CONFIG),)

# The peers the suite talks to (dcmtk, dicom3tools, Orthanc, redis-server, chromium, node).
test-tools:
	bash deploy/scripts/ensure-test-tools.sh

test: install test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Faults, load, bad input, security (part of `make test` too). RELIABILITY_ROUNDS=10 for the full counts.
test-reliability: install test-tools
	DIFF3M_RELIABILITY_ROUNDS=$(RELIABILITY_ROUNDS) $(BIN)/python -m pytest -q tests/reliability $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -x -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check diff3m tests bench
	$(BIN)/mypy

# The benchmarks, each appending its result (with the machine) to bench/RESULTS.md
bench: install test-tools
	$(BIN)/diff3m bench inference --checkpoint builtin:demo --record
	$(BIN)/diff3m bench ingest --record
	$(BIN)/diff3m bench e2e --checkpoint builtin:demo --record

# Reproduce builtin:demo: phantoms -> two-stage training -> residual statistics and threshold (~1 h, 2 cores)
demo-weights: install
	$(BIN)/python scripts/train_demo.py --threads 2

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# spotrun: `make finetune` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CLOUD  ?= local
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help venv finetune test test-fast lint bench clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)  ## Create .venv and install spotrun with its dev tools

finetune: $(STAMP)  ## Fine-tune (CLOUD=local|gcp|aws|azure, ARGS="key=value ...")
	$(PY) -m pipelines.finetune cloud=$(CLOUD) $(ARGS)

test: $(STAMP)  ## Run the whole test suite (real Ray and bucket servers, ~11 min on 2 cores)
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP)  ## Run the tests that start no Ray cluster (seconds)
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)  ## Benchmarks: print tables, write bench/results/*.json (~25 min on 2 cores)
	$(PY) -m bench.checkpoint
	$(PY) -m bench.overhead
	$(PY) -m bench.startup

clean:  ## Remove local runs and caches (not .venv)
	rm -rf runs .spotrun .pytest_cache .ruff_cache bench/results

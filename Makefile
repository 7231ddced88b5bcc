# Two commands do everything on a fresh machine:
#   make pipeline   set up .venv, then run the default (digits) pipeline with Snakemake
#   make test       set up .venv, then run ruff and the whole test suite (what CI runs)
#   make test-fast  the suite without the end-to-end runs (marked slow), for the edit-test loop
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rfpp-installed

.PHONY: setup test test-fast pipeline lint bench mlflow-ui

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# Two pytest workers (the two cores); loadgroup keeps tests that share a daemon (xdist_group) on one worker.
PYTEST := PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) --durations=15

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

pipeline: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores all

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

mlflow-ui: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1

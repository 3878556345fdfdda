# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Embedded default: every piece of state lives in the git-ignored .state/ folder.
export AD_STATE_DIR ?= $(CURDIR)/.state
export AD_LANDING_DIR ?= $(AD_STATE_DIR)/landing
export AD_LAKE_DIR ?= $(AD_STATE_DIR)/lake
export DAGSTER_HOME ?= $(AD_STATE_DIR)/dagster_home

DEMO_DRIVES ?= 2
DEMO_MARKETS ?= de,us,cn,jp
DEMO_MINUTES ?= 2

.PHONY: venv demo test dev lint fmt bench-ingest bench-sync bench-sensor clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ad_platform demo --drives $(DEMO_DRIVES) --markets $(DEMO_MARKETS) --minutes $(DEMO_MINUTES)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -rs -q $(PYTEST_ARGS)

dev: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: $(STAMP)
	$(VENV)/bin/ruff check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench-ingest: $(STAMP)
	$(PY) benchmarks/bench_ingest.py

bench-sync: $(STAMP)
	$(PY) benchmarks/bench_sync.py

bench-sensor: $(STAMP)
	$(PY) benchmarks/bench_sensor_postgres.py

clean:
	rm -rf $(AD_STATE_DIR)

# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every transitive dependency pinned with hashes (`make lock`); requirements.lock is the runtime subset (image).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

# Embedded default: every piece of state lives in the git-ignored .state/ folder.
export AD_STATE_DIR ?= $(CURDIR)/.state
export AD_LANDING_DIR ?= $(AD_STATE_DIR)/landing
export AD_LAKE_DIR ?= $(AD_STATE_DIR)/lake
export DAGSTER_HOME ?= $(AD_STATE_DIR)/dagster_home

DEMO_DRIVES ?= 5
DEMO_MARKETS ?= de,us,cn,jp
DEMO_MINUTES ?= 1
# pytest workers (pytest-xdist): the suite waits on servers and subprocesses much of its time, so 2 workers halve it
# on 2 cores. --dist loadfile keeps a file's tests, and so its session fixtures (Label Studio), on one worker.
PYTEST_WORKERS ?= 2

.PHONY: venv demo test dev lint fmt bench-ingest bench-e2e bench-ros2 bench-sync bench-sensor bench-curate bench-train mlflow-ui clean lock deploy-check checkov checkov-venv dbt-manifest dbt-docs review-venv review

venv: $(STAMP)

# --no-deps: the lock is the whole set (pip and setuptools included); pip check proves it is complete.
$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK)
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Regenerate both locks after editing pyproject.toml (existing pins are kept; LOCK_ARGS=--upgrade moves them).
# pip-compile reads pip's own configuration, so a local find-links folder (CPU torch wheel) is honoured
# without its path being written into the lock.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock: $(STAMP)
	$(PIP_COMPILE) --extra dev -o $(DEV_LOCK) pyproject.toml
	$(PIP_COMPILE) -c $(DEV_LOCK) -o $(LOCK) pyproject.toml

# The dbt metadata catalog's manifest, prepared offline at build time (@dbt_assets reads it at import); rebuilt
# when a file of the project changes. `dbt parse` needs no database and no network.
DBT_DIR := dbt_metadata
DBT_MANIFEST := $(DBT_DIR)/target/manifest.json
DBT_FILES := $(shell find $(DBT_DIR) -path $(DBT_DIR)/target -prune -o -path $(DBT_DIR)/logs -prune -o -type f -print)
$(DBT_MANIFEST): $(STAMP) $(DBT_FILES)
	cd $(DBT_DIR) && $(abspath $(VENV))/bin/dbt parse --quiet
	touch $(DBT_MANIFEST)
dbt-manifest: $(DBT_MANIFEST)

# dbt docs over the built metadata catalog (after `make demo`): $(DBT_DIR)/target/index.html, offline.
dbt-docs: $(DBT_MANIFEST)
	cd $(DBT_DIR) && $(abspath $(VENV))/bin/dbt docs generate --vars '{"lake_root": "$(AD_LAKE_DIR)", "metadata_path": "$(AD_STATE_DIR)/metadata.duckdb"}'

demo: $(STAMP) $(DBT_MANIFEST)
	$(PY) -m ad_platform demo --drives $(DEMO_DRIVES) --markets $(DEMO_MARKETS) --minutes $(DEMO_MINUTES)

test: $(STAMP) $(DBT_MANIFEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -rs -q -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

dev: $(STAMP) $(DBT_MANIFEST)
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

# ~1 GB and ~4 GB drives through run-once (landing -> raw -> decoded -> synced, checks included) against
# decode_drive alone; drives cached in $(AD_STATE_DIR)/bench-e2e (~5 GB; `rm -rf` it when done).
E2E_ARGS ?=
bench-e2e: $(STAMP) $(DBT_MANIFEST)
	$(PY) benchmarks/bench_e2e.py $(E2E_ARGS)

bench-ros2: $(STAMP)
	$(PY) benchmarks/bench_ros2_nested.py

bench-sync: $(STAMP)
	$(PY) benchmarks/bench_sync.py

bench-curate: $(STAMP)
	$(PY) benchmarks/bench_curate.py

bench-sensor: $(STAMP)
	$(PY) benchmarks/bench_sensor_postgres.py

# Steering model through the streaming loader: one JSON line (train/eval frames/s, peak RssAnon).
bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py

# The MLflow UI on the embedded store (runs, per-epoch metrics, registered models and their aliases).
mlflow-ui: $(STAMP)
	mkdir -p $(AD_STATE_DIR)/mlflow
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(AD_STATE_DIR)/mlflow/mlflow.db \
	  --default-artifact-root file://$(AD_STATE_DIR)/mlflow/artifacts -h 127.0.0.1 -p 5000

# Every offline deploy check: Kubernetes manifests, Helm values, Terraform (fmt, HCL cross-checks, checkov).
deploy-check: $(STAMP)
	@if command -v terraform >/dev/null 2>&1; then terraform fmt -check -recursive deploy/terraform; \
	else echo "SKIPPED terraform fmt: no terraform binary on PATH"; fi
	$(PY) -m pytest -rs -q tests/deploy/test_k8s.py tests/deploy/test_terraform.py
	@$(MAKE) --no-print-directory checkov

# checkov in its own venv: its many dependencies never move the platform's pins. Created once (stamp).
DEPLOY_VENV := .venv-deploy
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := $(DEPLOY_VENV)/.checkov-$(CHECKOV_VERSION)
checkov-venv:
	@if [ ! -f $(CHECKOV_STAMP) ]; then \
	  rm -rf $(DEPLOY_VENV) && $(PYTHON_BIN) -m venv $(DEPLOY_VENV) \
	  && $(DEPLOY_VENV)/bin/python -m pip install -q checkov==$(CHECKOV_VERSION) && touch $(CHECKOV_STAMP) \
	  || { rm -rf $(DEPLOY_VENV); echo "SKIPPED checkov: checkov==$(CHECKOV_VERSION) could not be installed"; exit 0; }; \
	fi
# `make test` runs the same scan (tests/deploy/test_terraform.py) when the venv exists, and skips it otherwise.
checkov: checkov-venv
	@if [ -f $(CHECKOV_STAMP) ]; then \
	  $(DEPLOY_VENV)/bin/checkov --quiet --compact --skip-download --framework terraform -d deploy/terraform; fi

# Label Studio (the review server, docs/review.md) in its own venv: it brings Django and pins of its own that
# clash with the platform's. Created once (stamp); `.ci/run` builds it in the background while the demo runs.
REVIEW_VENV := .venv-review
LABEL_STUDIO_VERSION := 1.23.2
REVIEW_STAMP := $(REVIEW_VENV)/.label-studio-$(LABEL_STUDIO_VERSION)
review-venv: $(REVIEW_STAMP)
$(REVIEW_STAMP):
	rm -rf $(REVIEW_VENV)
	$(PYTHON_BIN) -m venv $(REVIEW_VENV)
	$(REVIEW_VENV)/bin/python -m pip install -q label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

# The local review server (started once, kept running) and the demo split's review project per market.
review: $(STAMP) $(DBT_MANIFEST) $(REVIEW_STAMP)
	$(PY) -m ad_platform review --markets $(DEMO_MARKETS)

clean:
	rm -rf $(AD_STATE_DIR)

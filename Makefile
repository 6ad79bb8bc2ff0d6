# Developer and CI entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup setup-runtime system-deps test demo lint bench bench-quick bench-storage clean-venv postgres-up

# Tests that build their hub with tests/e2e.make_env run a second time (HUB_TEST_DATABASE: not an ATTEST_HUB_*
# setting, which the hub would refuse as unknown) with a fresh PostgreSQL
# database per test (the postgres-marked tests already use PostgreSQL in the first run).
PG_TEST_FILES = $(shell grep -l 'make_env' tests/test_*.py)

## setup: Debian packages (scripts/setup.sh), then .venv with the project installed editable, developer tools too
setup: system-deps $(STAMP)

## setup-runtime: the same without the developer tools (all `make demo` needs)
setup-runtime: system-deps $(RUNTIME_STAMP)

system-deps:
	@bash scripts/setup.sh

$(PY):
	python3 -m venv $(VENV)

# pip runs again only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(PY) system-deps
	$(PY) -m pip install --progress-bar off -e '.[dev,tpm,postgres]'
	touch $@ $(RUNTIME_STAMP)

$(RUNTIME_STAMP): pyproject.toml | $(PY) system-deps
	$(PY) -m pip install --progress-bar off -e '.[tpm,postgres]'
	touch $@

## test: the whole suite; any non-zero pytest exit (5 = nothing collected included) fails
test: setup postgres-up
	$(PY) -m pytest $(PYTEST_ARGS)
	HUB_TEST_DATABASE=postgresql $(PY) -m pytest -m 'not postgres' $(PYTEST_ARGS) $(PG_TEST_FILES)

## postgres-up: the local PostgreSQL (127.0.0.1:5432, trust auth, database `test`) must answer
postgres-up:
	@pg_isready -q -h 127.0.0.1 || { pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start \
		&& for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 && break; sleep 1; done; } \
		&& pg_isready -q -h 127.0.0.1 \
		|| { echo "error: PostgreSQL is not running at 127.0.0.1:5432 and could not be started" >&2; exit 1; }

## demo: DEMO_ARGS="--linger 600" keeps the web console up for 10 minutes after the fleet stops
demo: setup-runtime
	$(VENV)/bin/attest-hub demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict -p hub -p device_sim
	$(VENV)/bin/lint-imports

## bench: every figure (about 10 minutes on 2 cores); writes bench/results/latest.json and latest.md
bench: setup postgres-up
	$(PY) -m bench.run

## bench-quick: the same code at small scale (under 2 minutes); writes bench/results/quick/
bench-quick: setup postgres-up
	$(PY) -m bench.run --quick

## bench-storage: database bytes per message kind and an hour of one hostile device (under a minute)
bench-storage: setup
	$(PY) -m bench.storage

clean-venv:
	rm -rf $(VENV)

# Developer and CI entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup system-deps test demo lint bench bench-quick clean-venv

## setup: Debian packages (scripts/setup.sh), then .venv with the project installed editable
setup: system-deps $(STAMP)

system-deps:
	@bash scripts/setup.sh

$(PY):
	python3 -m venv $(VENV)

# pip runs again only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(PY) system-deps
	$(PY) -m pip install --progress-bar off -e '.[dev,tpm,postgres]'
	touch $@

## test: the whole suite; any non-zero pytest exit (5 = nothing collected included) fails
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/attest-hub demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict -p hub -p device_sim

bench: setup
	$(PY) -m bench.run

bench-quick: setup
	$(PY) -m bench.run --quick

clean-venv:
	rm -rf $(VENV)

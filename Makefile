# Everything starts from a fresh clone with Python 3.11+, Java 17+ and Maven installed.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never

.PHONY: env run test lint check-format typecheck broker-up broker-down clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The lock file pins every dependency; --frozen refuses to run if it is out of date.
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --all-groups --python $(PYTHON)
	touch $@

env: $(VENV)/.synced

## run: the main job: start the local broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and run.
run: env
	@if [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then \
		export KAFKA_BOOTSTRAP_SERVERS=$$($(BIN)/kafkaloop broker up) || exit 1; \
	fi; \
	$(BIN)/kafkaloop smoke

## test: lint, type-check, then the whole test suite against real local brokers.
test: lint typecheck
	$(BIN)/pytest

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: env
	$(BIN)/mypy

broker-up: env
	$(BIN)/kafkaloop broker up

broker-down: env
	$(BIN)/kafkaloop broker down

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache

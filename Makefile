# Everything starts from a fresh clone with Python 3.11+, Java 17+ and Maven installed.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never

.PHONY: env run test lint typecheck lock bench-web broker-up broker-down clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# requirements-lock.txt pins every dependency (runtime, web, test, lint, typing, bench), so
# every clone installs the same versions; `make lock` refreshes it from pyproject.toml.
$(VENV)/.synced: $(UV) pyproject.toml setup.py src/kafkaloop/*.c src/kafkaloop/*.h requirements-lock.txt
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python requirements-lock.txt
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

env: $(VENV)/.synced

## run: the main job: start the local broker (unless KAFKA_BOOTSTRAP_SERVERS or
## KAFKALOOP_BOOTSTRAP_SERVERS names a cluster) and serve.
run: env
	@if [ -z "$$KAFKA_BOOTSTRAP_SERVERS$$KAFKALOOP_BOOTSTRAP_SERVERS" ]; then \
		export KAFKA_BOOTSTRAP_SERVERS=$$($(BIN)/kafkaloop broker up) || exit 1; \
	fi; \
	exec $(BIN)/kafkaloop serve

## test: lint, type-check, then the whole test suite against real local brokers.
test: lint typecheck
	$(BIN)/pytest

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: env
	$(BIN)/mypy

lock: $(UV)
	$(UV) pip compile --quiet pyproject.toml --all-extras --group dev --group bench \
		--python-version 3.11 --no-header -o requirements-lock.txt

## bench-web: the load benchmark (needs siege and wrk: apt-get install siege wrk).
bench-web: env
	@command -v siege >/dev/null && command -v wrk >/dev/null || \
		{ echo "bench-web needs siege and wrk: apt-get install siege wrk" >&2; exit 1; }
	$(BIN)/python -m bench.web

broker-up: env
	$(BIN)/kafkaloop broker up

broker-down: env
	$(BIN)/kafkaloop broker down

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info
	rm -f src/kafkaloop/*.so

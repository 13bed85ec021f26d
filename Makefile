# Orion: `make run` starts everything on this machine; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test unit test-faults lint typecheck bench bench-overload clean

# The project with its test tools, and the local stack that `make run`, the tests and the
# benchmarks start (Kafka, PostgreSQL, a mail catcher): a package of its own, devstack/, so a
# production install (pip install .) pulls in none of it.
$(BIN)/.installed: pyproject.toml devstack/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./devstack
	$(BIN)/python -c "from orion_devstack import fetch_kafka; fetch_kafka()"
	touch $@

run: $(BIN)/.installed
	$(BIN)/orion run

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/unit

# Every fault scenario at full scale (about 20 minutes here); prints one table at the end.
test-faults: $(BIN)/.installed
	ORION_FAULTS=full $(BIN)/python -m pytest -q tests/e2e/test_faults.py

lint: $(BIN)/.installed
	$(BIN)/ruff check orion_streams devstack tests bench
	$(BIN)/ruff format --check orion_streams devstack tests bench

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# Every hot-path scenario beside pgbench, Kafka's perf tools and a bare aiokafka loop (about
# 11 minutes here); JSON and a markdown table in bench/results/ (see bench/hotpath.py).
bench: $(BIN)/.installed
	$(BIN)/python -m bench.hotpath

# Capacity, then 1x, 2x and 5x of it, open loop (see bench/overload.py for the other modes).
bench-overload: $(BIN)/.installed
	$(BIN)/python -m bench.overload --scenario overload --mode http

clean:
	rm -rf $(VENV) .orion .pytest_cache

# Each target creates its own virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint check bench clean

$(BIN)/syncd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/syncd  ## install, then run the simulator + daemon + console sink
	$(BIN)/syncd demo

test: $(BIN)/syncd  ## install, then run the test suite
	$(BIN)/pytest -q -n 2

lint: $(BIN)/syncd  ## ruff and mypy (strict) on syncd/
	$(BIN)/ruff check syncd tests
	$(BIN)/ruff format --check syncd tests
	$(BIN)/mypy

check: lint test

bench: $(BIN)/syncd  ## install the bench extra, then every issue #9 benchmark (~35-40 minutes)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-state .pytest_cache .mypy_cache .ruff_cache

# `make test` and `make run` create .venv when it is missing and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Tests stay fast and quiet on a shared box: torch uses at most two threads.
TEST_ENV := OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONHASHSEED=0

.PHONY: install test lint typecheck run demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint typecheck
	$(TEST_ENV) $(BIN)/pytest

# The service, embedded default: SQLite + filesystem broker + one worker under ./var.
PORT ?= 8000
run: $(STAMP)
	$(BIN)/pqz serve --port $(PORT)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/kmeans.py

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache

# Two commands on a fresh machine with Python 3.11+ and make:
#   make demo   - a whole restore drill on the embedded PostgreSQL, report path printed
#   make test   - the test suite against real throwaway PostgreSQL clusters
#   make test-fast - the inner loop: every test that starts no cluster, drill or container
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean

$(BIN)/atb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/atb
	$(BIN)/atb demo

test: $(BIN)/atb
	$(BIN)/pytest -n auto --dist loadfile

test-fast: $(BIN)/atb
	$(BIN)/pytest -m "not slow"

lint: $(BIN)/atb
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/atb
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) reports/*/ reports/index.html backups demo-backups

# The one place a newcomer looks: `make run` serves, `make test` proves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# The suite runs once per database; PostgreSQL as this machine provides it.
TEST_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test

.PHONY: install run migrate test test-sqlite test-postgres test-reliability lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

migrate: install
	$(BIN)/alembic upgrade head

run: migrate
	$(BIN)/hypercorn --bind $(HOST):$(PORT) service.app:app

test: test-sqlite test-postgres

test-sqlite: install
	$(BIN)/pytest

test-postgres: install
	TEST_DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/pytest

# Crashes, database outages, bad input, leaks, shutdown: real Hypercorn processes and signals,
# on SQLite and on a private PostgreSQL cluster the suite makes and removes itself.
test-reliability: install
	$(BIN)/pytest reliability

lint: install
	$(BIN)/ruff check service tests bench reliability alembic
	$(BIN)/ruff format --check service tests bench reliability alembic
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix service tests bench reliability alembic
	$(BIN)/ruff format service tests bench reliability alembic

bench: install
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/uow.py
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BIN)/python bench/uow_instructions.py
	$(BIN)/python bench/ledger_load.py
	$(BIN)/python bench/isolation.py
	$(BIN)/python bench/import_entries.py
	$(BIN)/python bench/jobs.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# The one place a newcomer looks: `make run` serves, `make test` proves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
HOST ?= 127.0.0.1
PORT ?= 8000
# The suite runs once per database; PostgreSQL as this machine provides it.
TEST_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test

.PHONY: install browser run migrate test test-sqlite test-postgres test-reliability lint docs format bench bench-instructions clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's chromium, for the browser test of /docs (Playwright drives it; it downloads nothing).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

migrate: install
	$(BIN)/alembic upgrade head

run: migrate
	$(BIN)/service serve --host $(HOST) --port $(PORT)

test: test-sqlite test-postgres

test-sqlite: install browser
	$(BIN)/pytest

test-postgres: install browser
	TEST_DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/pytest

# Crashes, database outages, bad input, leaks, shutdown: real Hypercorn processes and signals,
# on SQLite and on a private PostgreSQL cluster the suite makes and removes itself.
test-reliability: install
	$(BIN)/pytest reliability

# bench/ is type-checked too, with the peer's packages (the `bench` extra).
LINTED := service tests bench reliability alembic conftest.py
lint: install $(BENCH_STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/; any warning fails the build. (The
# variable silences Material's banner about its future, printed on every build.)
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

format: install
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

# Head against the base commit (issues 12 and 11), then the layer's own benchmarks; about 15
# minutes. `make bench QUICK=1`: fewer, shorter rounds (about 8 minutes). bench/uow.py runs
# --quick here, to stay within that: run it alone for its full rounds. Each benchmark's
# PostgreSQL databases are named after BENCH_POSTGRES (bench_compare_head, bench_uow, ...).
BENCH_QUICK := $(if $(QUICK),--quick,)
BENCH_POSTGRES ?= postgresql+asyncpg://postgres@127.0.0.1:5432/bench
bench: install $(BENCH_STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@command -v pgbench >/dev/null || (apt-get update -qq && apt-get install -y -qq postgresql-client)
	BENCH_POSTGRES_URL=$(BENCH_POSTGRES) $(BIN)/python bench/compare.py $(BENCH_QUICK)
	$(BIN)/python bench/sqlite_writes.py $(BENCH_QUICK)
	BENCH_POSTGRES_URL=$(BENCH_POSTGRES)_uow $(BIN)/python bench/uow.py --quick
	LEDGER_LOAD_POSTGRES_URL=$(BENCH_POSTGRES)_ledger_load $(BIN)/python bench/ledger_load.py
	BENCH_POSTGRES_URL=$(BENCH_POSTGRES)_isolation $(BIN)/python bench/isolation.py
	BENCH_POSTGRES_URL=$(BENCH_POSTGRES)_import $(BIN)/python bench/import_entries.py
	BENCH_POSTGRES_URL=$(BENCH_POSTGRES)_jobs $(BIN)/python bench/jobs.py

# Instructions per request under callgrind: about half an hour on this machine, so apart from
# `make bench`. Figures for a profile, not for speed claims (those are wall-clock ratios).
bench-instructions: install
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	BENCH_POSTGRES_URL=$(BENCH_POSTGRES)_uow $(BIN)/python bench/uow_instructions.py

clean:
	rm -rf $(VENV) var site .pytest_cache .mypy_cache .ruff_cache

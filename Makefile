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

.PHONY: install browser pgbouncer run migrate test test-sqlite test-postgres test-pgbouncer test-reliability lint docs format bench bench-stacks bench-instructions bench-replicas wrk clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's chromium, for the browser test of /docs (Playwright drives it; it downloads nothing).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Debian's PgBouncer (1.18), for the suite through PgBouncer and its benchmark; the tests start
# their own on a free port.
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || (apt-get update -qq && apt-get install -y -qq pgbouncer)

migrate: install
	$(BIN)/alembic upgrade head

run: migrate
	$(BIN)/service serve --host $(HOST) --port $(PORT)

test: test-sqlite test-postgres

test-sqlite: install browser
	$(BIN)/pytest

test-postgres: install browser
	TEST_DATABASE_URL=$(TEST_POSTGRES_URL) $(BIN)/pytest

# The suite again, through a PgBouncer in transaction mode in front of TEST_POSTGRES_URL's server
# (started on a free port for the run), with DATABASE_PGBOUNCER=true.
test-pgbouncer: install browser pgbouncer
	$(BIN)/python -m reliability.pgbouncer --url $(TEST_POSTGRES_URL) -- $(BIN)/pytest

# Crashes, database outages, bad input, leaks, shutdown, read replicas: real Hypercorn processes
# and signals, on SQLite and on private PostgreSQL clusters the suite makes and removes itself.
test-reliability: install
	$(BIN)/pytest reliability

# bench/ is type-checked too, with the peer's packages (the `bench` extra).
LINTED := service tests bench reliability alembic conftest.py
lint: install $(BENCH_STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

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

# The Django stack runs in a venv of its own: Django 6 needs Python >= 3.12 (pyenv's, else PATH's).
DJANGO_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python3) python3.12)
DJANGO_VENV := .venv-django
DJANGO_STAMP := $(DJANGO_VENV)/.installed
$(DJANGO_STAMP):
	$(DJANGO_PYTHON) -m venv $(DJANGO_VENV)
	$(DJANGO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DJANGO_VENV)/bin/python -m pip install --quiet 'django>=6.0,<7' 'psycopg[binary]>=3.2' 'gunicorn>=23.0'
	touch $@

# Every lasting benchmark (bench/), each writing its figures to docs/benchmarks/results/<name>.md:
# the five stacks, the ledger against a base commit, the layer against hand-written sessions,
# the ledger under load, test isolation, the CSV import, the metrics' cost, read replicas and
# PgBouncer against direct connections. About 40 minutes;
# `make bench QUICK=1`: fewer, shorter rounds, a smoke check (its results files say so).
# PostgreSQL databases are named after BENCH_POSTGRES (bench_stacks_layer, bench_ledger_head,
# bench_uow, ...).
BENCH_QUICK := $(if $(QUICK),--quick,)
BENCH_POSTGRES ?= postgresql+asyncpg://postgres@127.0.0.1:5432/bench
BENCH_ENV := BENCH_POSTGRES_URL=$(BENCH_POSTGRES)
bench: install $(BENCH_STAMP) wrk pgbouncer $(DJANGO_STAMP)
	$(BENCH_ENV) $(BIN)/python bench/stacks.py $(BENCH_QUICK)
	$(BENCH_ENV) $(BIN)/python bench/ledger.py $(BENCH_QUICK)
	$(BENCH_ENV) $(BIN)/python bench/uow.py $(BENCH_QUICK)
	$(BENCH_ENV) $(BIN)/python bench/ledger_load.py $(BENCH_QUICK)
	$(BENCH_ENV) $(BIN)/python bench/isolation.py $(BENCH_QUICK)
	$(BENCH_ENV) $(BIN)/python bench/import_entries.py $(BENCH_QUICK)
	$(BENCH_ENV) $(BIN)/python bench/metrics_cost.py $(BENCH_QUICK)
	$(BIN)/python bench/replicas.py $(BENCH_QUICK)

# The layer against hand-written SQLAlchemy, FastAPI + advanced-alchemy, Django and the raw-driver
# ceiling, on PostgreSQL and SQLite (bench/stacks.py): about 10 minutes.
bench-stacks: install $(BENCH_STAMP) wrk $(DJANGO_STAMP)
	$(BENCH_ENV) $(BIN)/python bench/stacks.py $(BENCH_QUICK)

wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

# Instructions per request under callgrind: about half an hour on this machine, so apart from
# `make bench`. Figures for a profile, not for speed claims (those are wall-clock ratios).
bench-instructions: install
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(BENCH_ENV) $(BIN)/python bench/uow_instructions.py $(BENCH_QUICK)

# GET and deposit through PgBouncer (transaction mode), and with a read replica, against direct
# connections, same run, on a private primary, replica, PgBouncer and Redis (about 3 minutes).
bench-replicas: install wrk pgbouncer
	$(BIN)/python bench/replicas.py $(BENCH_QUICK)

clean:
	rm -rf $(VENV) $(DJANGO_VENV) var site .pytest_cache .mypy_cache .ruff_cache

"""The five stacks of ``bench/stacks.py``: the same three endpoints, written five ways.

- ``GET /items/<id>``: one row by primary key, ``{"id", "name"}``, else 404;
- ``POST /items`` ``{"name": ...}``: one row inserted and committed, 201 with it;
- ``GET /nodb``: ``{"ok": true}``, no database.

Each is served by one process on a database of its own, read from
``DATABASE_URL`` (SQLAlchemy's form; the Django stack converts it). The table,
``items (id integer primary key, name varchar(100))``, is made and seeded by the
driver. Every stack keeps the same durability: on SQLite WAL with
``synchronous=FULL`` (the layer's: SQLite's default, which ``service/db/_sqlite.py``
leaves as it is), a busy timeout of 30 s, and writes that take the write lock at
``BEGIN IMMEDIATE``; on PostgreSQL the server's default ``synchronous_commit``.
The pooled stacks keep ``POOL_SIZE`` connections and open none beyond them.

This package imports nothing itself: the Django stack runs it in a venv of its own.
"""

POOL_SIZE = 10
"""Connections of each pooled stack (no overflow); Django has one per thread (8)."""
BUSY_TIMEOUT_MS = 30_000
"""SQLite's busy timeout, as the layer's (``service.db._sqlite.BUSY_TIMEOUT``)."""

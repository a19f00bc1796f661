"""The two sides of a head-versus-base benchmark: checkouts, their databases, their servers.

The head is this work tree, uncommitted changes included. The base is a clone
checked out at ``BASE_COMMIT``. Both are served by this interpreter and its
packages: a server runs in its checkout's directory with the checkout on
``PYTHONPATH``, so ``service`` is that checkout's (checked from what each
server's processes log when they import it). Each side has a database of its
own, migrated by its own checkout's Alembic migrations, and is seeded through
the HTTP API both versions share (``bench/seed.py``), so that nothing here
depends on either side's schema.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.load import Side
from bench.seed import Customer, seed, write_customers
from bench.servers import ROOT, Server

BASE_COMMIT = "146505f"
"""Issue 11's and issue 12's base: main when they were filed."""

SHIM = ROOT / "bench" / "shim"
"""Holds ``bench_served``: what the servers serve (``service.app:app``, logging its origin)."""

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench"
SERVER_ENV = {"RATE_LIMIT_ENABLED": "false"}
"""For both sides: no rate limit (a version that has none ignores it)."""


@dataclass(frozen=True)
class Checkout:
    label: str
    root: Path
    commit: str
    """The short commit; ``+changes`` when the work tree differs from it."""

    def __str__(self) -> str:
        return f"{self.label} ({self.commit}, {self.root})"


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def this_checkout(label: str = "head") -> Checkout:
    commit = _git("rev-parse", "--short", "HEAD", cwd=ROOT)
    if _git("status", "--porcelain", "--untracked-files=no", cwd=ROOT):
        commit += "+changes"
    return Checkout(label, ROOT, commit)


def clone_at(ref: str, into: Path, label: str) -> Checkout:
    """A clone of this repository at ``ref``, in ``into``."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "--quiet", ref], check=True)
    return Checkout(label, into, _git("rev-parse", "--short", "HEAD", cwd=into))


def _env(checkout: Checkout, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        **SERVER_ENV,
        "PYTHONPATH": str(checkout.root),
        "DATABASE_URL": database_url,
    }


def migrate(checkout: Checkout, database_url: str) -> None:
    """``alembic upgrade head`` of the checkout's own migrations, on ``database_url``."""
    alembic = Path(sys.executable).parent / "alembic"
    done = subprocess.run(
        [str(alembic), "upgrade", "head"],
        cwd=checkout.root,
        env=_env(checkout, database_url),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: alembic upgrade head failed:\n{done.stderr[-3000:]}")


def serve(
    checkout: Checkout,
    name: str,
    database_url: str,
    log_dir: Path,
    *,
    workers: int = 1,
) -> Server:
    """The checkout's ``service.app:app`` under Hypercorn, ready, checked to be that checkout's."""
    env = {**SERVER_ENV, "DATABASE_URL": database_url}
    server = Server(
        name,
        "bench_served:app",
        env,
        log_dir,
        workers=workers,
        root=checkout.root,
        pythonpath=(SHIM,),
    )
    try:
        server.wait_ready("/healthz", timeout=60)
        check_origin(server, checkout, workers)
    except BaseException:
        server.stop()
        raise
    return server


def check_origin(server: Server, checkout: Checkout, workers: int, timeout: float = 60) -> None:
    """Every process that imported ``service`` imported the checkout's; at least ``workers``.

    The first worker may answer before the others have started: wait for them to log.
    """
    deadline = time.monotonic() + timeout
    while True:
        origins = re.findall(r"^bench_served: pid \d+ serves (.+)$", server.log_since(0), re.M)
        if len(origins) >= workers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    expected = str(checkout.root.resolve())
    if len(origins) < workers or any(origin != expected for origin in origins):
        raise RuntimeError(
            f"{server.name} should serve {expected} with {workers} worker(s); "
            f"its processes imported service from: {origins}\n{server.log_tail()}"
        )


@dataclass(frozen=True)
class Pair:
    """Head and base served side by side, seeded alike: the two sides of a comparison."""

    head: Side
    base: Side
    base_customers: list[Customer]


def serve_pair(
    head: Checkout,
    base: Checkout,
    database: str,
    urls: dict[str, str],
    work: Path,
    stack: ExitStack,
    *,
    workers: int = 1,
    seeded: Pair | None = None,
) -> Pair:
    """Both checkouts served, each on ``urls[label]``, stopped when ``stack`` closes.

    Unless ``seeded`` says it was done before (the same databases, served anew),
    each database is migrated by its checkout, then seeded through its server.
    """
    servers: dict[str, Server] = {}
    for checkout in (head, base):
        url = urls[checkout.label]
        if seeded is None:
            migrate(checkout, url)
        name = f"{checkout.label}-{database}-w{workers}"
        server = serve(checkout, name, url, work, workers=workers)
        stack.callback(server.stop)
        servers[checkout.label] = server
    if seeded is not None:
        return Pair(
            Side(head.label, servers[head.label], seeded.head.users),
            Side(base.label, servers[base.label], seeded.base.users),
            seeded.base_customers,
        )
    made = asyncio.run(seed([servers[head.label].base, servers[base.label].base]))
    sides = [
        Side(
            checkout.label,
            servers[checkout.label],
            write_customers(customers, work / f"users-{checkout.label}-{database}.txt"),
        )
        for checkout, customers in zip((head, base), made, strict=True)
    ]
    return Pair(sides[0], sides[1], made[1])


# --- PostgreSQL scratch databases -------------------------------------------------------------


def postgres_url(name: str) -> str:
    """``BENCH_POSTGRES_URL`` (default ``.../bench``) with the database ``<its name>_<name>``."""
    base = make_url(os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    return base.set(database=f"{base.database}_{name}").render_as_string(hide_password=False)


async def recreate_postgres_database(url: str) -> None:
    """Drop the database ``url`` names if it exists, and create it empty."""
    parsed = make_url(url)
    if not parsed.database or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", parsed.database):
        raise ValueError(f"{url}: expected a plain database name")
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        await admin.dispose()


async def drop_postgres_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" (FORCE)'))
    finally:
        await admin.dispose()

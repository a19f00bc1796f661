"""The sides of a this-tree-against-a-base benchmark: checkouts, and their servers.

The head is this work tree, uncommitted changes included. The base is a clone
(sharing this repository's objects) checked out at a commit, in a temporary
directory. Both are served by this interpreter and its packages: a server runs
in its checkout's directory with the checkout on ``PYTHONPATH``, so ``service``
is that checkout's (checked from what each server's processes log when they
import it). Each side has a database of its own, migrated by its own checkout's
Alembic migrations (``bench.harness.migrate``), and is seeded through the HTTP
API both versions share (``bench/seed.py``), so that nothing here depends on
either side's schema.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT, Server, commit

BASE_COMMIT = "e05891a"
"""Issue 21's base: main when it was filed."""

SHIM = ROOT / "bench" / "shim"
"""Holds ``bench_served``: what the servers serve (``service.app:app``, logging its origin)."""

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
    return Checkout(label, ROOT, commit())


def clone_at(ref: str, into: Path, label: str) -> Checkout:
    """A clone of this repository at ``ref``, in ``into``."""
    subprocess.run(["git", "clone", "--quiet", "--shared", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "--quiet", ref], check=True)
    return Checkout(label, into, _git("rev-parse", "--short", "HEAD", cwd=into))


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

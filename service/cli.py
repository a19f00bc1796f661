"""The ``service`` command. Each command that uses the database is one unit of work.

It commits when the command succeeds (exit status 0) and rolls back on an
exception or a non-zero exit, with the same promise as a request: a command
that failed wrote nothing. Serialization failures and deadlocks re-run it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from service import modules, tracing
from service.config import Settings
from service.db import make_engine
from service.db.cli import in_unit_of_work as _in_unit_of_work

P = ParamSpec("P")
T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
READ_TIMEOUT = 15
"""Hypercorn's: longer than the app's BODY_TIMEOUT, so that a slow body gets its 408 first."""
KEEP_ALIVE_TIMEOUT = 5


@asynccontextmanager
async def _engine() -> AsyncIterator[AsyncEngine]:
    settings = Settings()
    engine = make_engine(settings.database_url, **settings.engine_options())
    tracing.instrument_engine(engine)  # if traces are on (OTEL_*)
    try:
        yield engine
    finally:
        await engine.dispose()


def in_unit_of_work(command: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Make an async command body a click callback that runs as one unit of work."""
    return _in_unit_of_work(command, setting=_engine)


@click.group()
def main() -> None:
    """The ledger service: serve it, run its worker, manage its data."""
    modules.load()


@main.group()
def users() -> None:
    """Manage users."""


@users.command("create")
@click.option("--name", required=True)
@click.option("--email", required=True)
@in_unit_of_work
async def create_user(name: str, email: str) -> None:
    """Create a user and print their API token (shown this once)."""
    from service.ledger.auth import issue
    from service.ledger.models import User
    from service.ledger.schemas import NewUser

    try:
        data = NewUser(name=name, email=email)
    except ValidationError as error:
        raise click.BadParameter(_first_problem(error)) from None
    email_key = data.email.lower()
    if await User.query.filter_by(email_key=email_key).first() is not None:
        raise click.ClickException(f"the email address {data.email} is already in use")
    user = await User.create(name=data.name, email=data.email, email_key=email_key)
    _, secret = await issue(user.id, "default")
    click.echo(f"user {user.id} created; their API token (shown this once):")
    click.echo(secret)


@main.command("import-entries")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--account", "account_id", type=click.IntRange(1, 2**31 - 1), required=True)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--progress/--no-progress", default=None, help="[default: on a terminal]")
@in_unit_of_work
async def import_entries(
    file: Any, account_id: int, batch_size: int, progress: bool | None
) -> None:
    """Import deposits and withdrawals from a CSV FILE (kind,amount[,description]): all or none."""
    from service.ledger.importer import ImportFailed
    from service.ledger.importer import import_entries as run_import

    if progress is None:
        progress = sys.stderr.isatty()
    lines = list(file) if progress else file
    try:
        if progress:
            with click.progressbar(
                length=max(len(lines) - 1, 0), label="Importing", file=sys.stderr
            ) as bar:
                done = await run_import(
                    lines, account_id, batch_size=batch_size, progress=bar.update
                )
        else:
            done = await run_import(lines, account_id, batch_size=batch_size)
    except ImportFailed as error:
        raise click.ClickException(f"{error}; nothing was imported") from None
    click.echo(
        f"imported {done.entries} entries into account {account_id}: "
        f"{done.deposited} in, {done.withdrawn} out, balance {done.balance}"
    )


@main.group()
def jobs() -> None:
    """Inspect the outbox of jobs, and retry dead ones."""


JOB_STATES = ("dead", "scheduled", "queued", "running")


@jobs.command("list")
@click.option(
    "--state",
    "states",
    type=click.Choice([*JOB_STATES, "all"]),
    multiple=True,
    help="dead (the default), scheduled (waiting for a retry or their time), queued, "
    "running, or all; repeat for several.",
)
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@in_unit_of_work
async def list_jobs(states: tuple[str, ...], limit: int) -> None:
    """List jobs, the most recent first: dead ones unless --state says otherwise."""
    from service.jobs import list_jobs as find

    wanted = JOB_STATES if "all" in states else (states or ("dead",))
    rows = await find(wanted, limit=limit)
    if not rows:
        click.echo(f"no {' or '.join(wanted)} jobs")
        return
    for row in rows:
        args = ", ".join(repr(arg) for arg in row.args)
        line = f"{row.id}  {row.state}  {row.name}({args})  attempts {row.attempts}"
        when = row.ended_at if row.state == "dead" else row.due_at
        if when is not None:
            line += f"  {'died' if row.state == 'dead' else 'due'} {when:%Y-%m-%d %H:%M:%S} UTC"
        click.echo(line)
        if row.last_error:
            click.echo(f"    {row.last_error.strip().splitlines()[-1]}")


@jobs.command("retry")
@click.argument("job_id", type=click.IntRange(1))
@in_unit_of_work
async def retry_job(job_id: int) -> None:
    """Run the dead (or scheduled) job JOB_ID again now, its attempts starting over."""
    from service.jobs import retry_job as retry

    row = await retry(job_id)
    if row is None:
        raise click.ClickException(f"there is no dead or scheduled job {job_id}")
    click.echo(f"job {job_id} ({row.name}) is scheduled again; a serving process runs it")


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
def upgrade() -> None:
    """Apply the Alembic migrations up to the newest (DATABASE_URL)."""
    from alembic.config import Config

    from alembic import command

    command.upgrade(Config(ROOT / "alembic.ini"), "head")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--read-timeout",
    type=click.IntRange(1),
    default=READ_TIMEOUT,
    show_default=True,
    help="Seconds a connection may send nothing (headers included) before it is closed.",
)
@click.option(
    "--keep-alive",
    type=click.IntRange(1),
    default=KEEP_ALIVE_TIMEOUT,
    show_default=True,
    help="Seconds an idle keep-alive connection stays open.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    envvar="METRICS_PORT",
    default=None,
    help="Serve GET /metrics (Prometheus) on this port, and nothing else there [METRICS_PORT].",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address of the metrics port: one only the scraper reaches.",
)
def serve(
    host: str,
    port: int,
    workers: int,
    read_timeout: int,
    keep_alive: int,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Serve the API with Hypercorn, in HTTP/1.1 unless HTTP2=true.

    A request's body must arrive within BODY_TIMEOUT (10 s; 408 otherwise) before any
    database work starts; the read timeout closes a connection that stalls even before
    its headers are in.
    """
    from hypercorn.config import Config
    from hypercorn.run import run

    config = Config()
    config.application_path = "service.app:app"
    config.bind = [f"{host}:{port}"]
    if metrics_port is not None:
        if metrics_port == port:
            raise click.BadParameter("must differ from --port", param_hint="--metrics-port")
        os.environ["METRICS_PORT"] = str(metrics_port)  # the workers' apps read it
        config.bind.append(f"{metrics_host}:{metrics_port}")
    config.workers = workers
    config.read_timeout = read_timeout
    config.keep_alive_timeout = keep_alive
    # HTTP/2 is not served unless asked for (service.serving): not over TLS's ALPN either.
    config.alpn_protocols = ["h2", "http/1.1"] if Settings().http2 else ["http/1.1"]
    sys.exit(run(config))


@main.command()
@click.option("--concurrency", type=click.IntRange(1), default=2, show_default=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve GET /metrics (Prometheus) on this port: the worker processes' figures.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
def worker(concurrency: int, loglevel: str, metrics_port: int | None, metrics_host: str) -> None:
    """Run the Celery worker for jobs (CELERY_BROKER_URL, CELERY_QUEUE)."""
    from service.worker import celery_app, serve_metrics

    if metrics_port is not None:
        serve_metrics(metrics_host, metrics_port)

    celery_app.worker_main(
        ["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", "--pool=prefork"]
    )


def _first_problem(error: ValidationError) -> str:
    item = error.errors(include_url=False)[0]
    return f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"

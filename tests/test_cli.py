"""The ``service`` command: each command is one unit of work, committed only on success."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from quart import Quart
from quart.typing import TestClientProtocol as Client
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.cli import in_unit_of_work
from service.db.testing import running_coroutines_with
from service.ledger.factories import AccountFactory, UserFactory
from service.ledger.models import Account, Entry, User
from service.testing import Cli
from tests.databases import plain_engine
from tests.db.models import Widget

ROOT = Path(__file__).resolve().parent.parent


async def _count(connection: AsyncConnection, model: type[User] | type[Entry]) -> int:
    return int(await connection.scalar(select(func.count()).select_from(model)) or 0)


async def test_users_create_commits_and_prints_a_working_token(
    service_cli: Cli, service_client: Client, service_connection: AsyncConnection
) -> None:
    result = await service_cli.invoke("users", "create", "--name", "Ada", "--email", "a@x.org")

    assert result.exit_code == 0, result.output
    token = result.output.splitlines()[-1]
    me = await service_client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert (await me.get_json())["email"] == "a@x.org"
    assert await _count(service_connection, User) == 1


async def test_a_failing_command_writes_nothing(
    service_cli: Cli, service_connection: AsyncConnection
) -> None:
    await UserFactory.create_async(email="taken@x.org")

    taken = await service_cli.invoke("users", "create", "--name", "B", "--email", "TAKEN@x.org")
    invalid = await service_cli.invoke("users", "create", "--name", "B", "--email", "nope")

    assert taken.exit_code == 1 and "already in use" in taken.output
    assert invalid.exit_code == 2 and "email" in invalid.output
    assert await _count(service_connection, User) == 1


def _csv(path: Path, *rows: str, header: str = "kind,amount,description") -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


async def test_import_entries_applies_every_row_in_order(
    service_cli: Cli, service_connection: AsyncConnection, tmp_path: Path
) -> None:
    user = await UserFactory.create_async()
    account = await AccountFactory.create_async(user_id=user.id)
    rows = [f"deposit,{n},pay {n}" for n in range(1, 2501)] + ["withdrawal,1000,", "deposit,7,"]
    file = _csv(tmp_path / "entries.csv", *rows)

    result = await service_cli.invoke("import-entries", file, "--account", str(account.id))

    assert result.exit_code == 0, result.output
    deposited = sum(range(1, 2501)) + 7
    assert f"imported 2502 entries into account {account.id}" in result.output
    balance = await service_connection.scalar(select(Account.balance).filter_by(id=account.id))
    assert balance == deposited - 1000
    chain = (
        await service_connection.execute(
            select(Entry.amount, Entry.balance_after).order_by(Entry.id)
        )
    ).all()
    assert len(chain) == 2502
    running = 0
    for amount, balance_after in chain:  # every entry carries the balance after it
        running += amount
        assert balance_after == running


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (["deposit,10,", "deposit,0,"], "line 3: amount: Input should be greater than 0"),
        (["deposit,10,", "deposit,1.5,"], "line 3: amount: Input should be a valid integer"),
        (["deposit,10,", "gift,5,"], "line 3: kind: Input should be 'deposit' or 'withdrawal'"),
        (["deposit,10,", "withdrawal,11,"], "line 3: insufficient funds"),
        (["deposit,10,", "deposit,,"], "line 3: amount: Input should be a valid integer"),
        (["deposit,10,", "deposit,5,a,b"], "line 3: more fields than the header names"),
        (["deposit,10,", f"deposit,{10**12 + 1},"], "line 3: amount: Input should be less"),
    ],
)
async def test_a_bad_row_names_its_line_and_nothing_is_written(
    service_cli: Cli,
    service_connection: AsyncConnection,
    tmp_path: Path,
    rows: list[str],
    problem: str,
) -> None:
    user = await UserFactory.create_async()
    account = await AccountFactory.create_async(user_id=user.id)
    good = [f"deposit,{n}," for n in range(1, 3000)]  # several batches before the bad line
    file = _csv(tmp_path / "bad.csv", *rows, *good)

    result = await service_cli.invoke(
        "import-entries", file, "--account", str(account.id), "--batch-size", "100"
    )

    assert result.exit_code == 1
    assert problem in result.output and "nothing was imported" in result.output
    assert await _count(service_connection, Entry) == 0
    assert await service_connection.scalar(select(Account.balance)) == 0


async def test_a_bad_header_or_a_missing_account_is_refused(
    service_cli: Cli, service_connection: AsyncConnection, tmp_path: Path
) -> None:
    user = await UserFactory.create_async()
    account = await AccountFactory.create_async(user_id=user.id)

    header = await service_cli.invoke(
        "import-entries",
        _csv(tmp_path / "h.csv", "10,deposit", header="amount,type"),
        "--account",
        str(account.id),
    )
    missing = await service_cli.invoke(
        "import-entries", _csv(tmp_path / "m.csv", "deposit,5,"), "--account", "999999"
    )

    assert header.exit_code == 1 and "line 1: the header must name" in header.output
    assert missing.exit_code == 1 and "there is no account 999999" in missing.output
    assert await _count(service_connection, Entry) == 0


async def _service(*args: str, database_url: str) -> tuple[int, str]:
    """The installed console script, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "service"),
        *args,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.service_committing
async def test_the_console_script_commits_on_success_only(
    service_database_url: str, service_engine: AsyncEngine, tmp_path: Path
) -> None:
    code, output = await _service(
        "users", "create", "--name", "Ada", "--email", "a@x.org", database_url=service_database_url
    )
    assert code == 0, output
    async with service_engine.connect() as connection:
        account_id = await _an_account_of(connection, email_key="a@x.org")
    bad = _csv(tmp_path / "bad.csv", "deposit,5,", "deposit,-5,")
    good = _csv(tmp_path / "good.csv", "deposit,5,", "withdrawal,2,")

    failed = await _service(
        "import-entries", bad, "--account", str(account_id), database_url=service_database_url
    )
    done = await _service(
        "import-entries", good, "--account", str(account_id), database_url=service_database_url
    )

    assert failed[0] == 1 and "line 3: amount" in failed[1]
    assert done[0] == 0, done[1]
    async with service_engine.connect() as connection:
        amounts = (await connection.scalars(select(Entry.amount).order_by(Entry.id))).all()
        balance = await connection.scalar(select(Account.balance).filter_by(id=account_id))
    assert (amounts, balance) == ([5, -2], 3)


async def _an_account_of(connection: AsyncConnection, *, email_key: str) -> int:
    user_id = await connection.scalar(select(User.id).filter_by(email_key=email_key))
    assert user_id is not None, "the user was not committed"
    result = await connection.execute(
        insert(Account).values(user_id=user_id, name="Main", currency="USD", balance=0)
    )
    await connection.commit()
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])


@click.command()
@click.argument("name")
@click.argument("code", type=int)
@in_unit_of_work
async def _add_widget_then_exit(name: str, code: int) -> None:
    await Widget(name=name).save()
    sys.exit(code)


@pytest.mark.service_committing
@pytest.mark.parametrize(("code", "kept"), [(0, True), (3, False)])
async def test_a_command_that_exits_commits_only_on_status_0(
    service_app: Quart, service_engine: AsyncEngine, code: int, kept: bool
) -> None:
    loop = asyncio.get_running_loop()

    def on_this_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    with running_coroutines_with(on_this_loop):
        result = await asyncio.to_thread(
            CliRunner().invoke,
            _add_widget_then_exit,
            [f"exit {code}", str(code)],
            env={"DATABASE_URL": service_app.config["DATABASE_URL"]},
        )

    assert result.exit_code == code
    async with service_engine.connect() as connection:
        names = (await connection.scalars(select(Widget.name))).all()
    assert names == ([f"exit {code}"] if kept else [])


async def test_the_import_shows_a_progress_bar_when_asked(service_cli: Cli, tmp_path: Path) -> None:
    user = await UserFactory.create_async()
    account = await AccountFactory.create_async(user_id=user.id)
    file = _csv(tmp_path / "p.csv", *(f"deposit,{n}," for n in range(1, 50)))

    result = await service_cli.invoke(
        "import-entries", file, "--account", str(account.id), "--progress"
    )

    assert result.exit_code == 0, result.output
    assert "Importing" in result.stderr  # click draws the bar itself on a terminal only


@pytest.mark.service_committing  # databases of their own
async def test_db_upgrade_migrates_and_serve_serves(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/served.db"
    code, output = await _service("db", "upgrade", database_url=url)
    assert code == 0, output
    engine = plain_engine(url)
    async with engine.connect() as connection:
        version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    await engine.dispose()
    assert version == ScriptDirectory.from_config(Config(ROOT / "alembic.ini")).get_current_head()

    port = _free_port()
    server = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "service"),
        "serve",
        "--port",
        str(port),
        env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(20):
                while True:
                    try:
                        response = await http.get(
                            f"http://127.0.0.1:{port}/readyz", headers={"X-Request-ID": "probe-1"}
                        )
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
        assert (response.status_code, response.json()) == (200, {"status": "ready"})
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = await asyncio.wait_for(server.communicate(), 15)
    # The access log is on by default: a JSON line for the request, on standard error.
    access = [
        json.loads(line)
        for line in errors.decode().splitlines()
        if line.startswith("{") and '"service.access"' in line
    ]
    assert [
        (line["route"], line["status"]) for line in access if line["request_id"] == "probe-1"
    ] == [("/readyz", 200)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port

"""A client generated from ``/openapi.json`` is one a person would use.

openapi-python-client (a dev dependency) generates a client from the served document with no
warning; the client has one method per operation, named after it, and parses an error answer
into the one error model. A flow runs through it against the app: register, open an account,
deposit, and a withdrawal refused with 422 ``insufficient_funds``, which wrote nothing.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from quart import Quart
from quart.typing import TestClientProtocol as Client

BIN = Path(sys.executable).parent
PACKAGE = "ledger_client"


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Path]:
    """Where the client is generated and imported from; forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


async def _generate(service_client: Client, where: Path) -> str:
    document = await (await service_client.get("/openapi.json")).get_data(as_text=True)
    (where / "openapi.json").write_text(document)
    process = await asyncio.create_subprocess_exec(
        str(BIN / "openapi-python-client"),
        "generate",
        "--path",
        "openapi.json",
        "--meta",
        "none",
        "--output-path",
        PACKAGE,
        cwd=where,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.mark.timeout(120)
async def test_a_generated_client_runs_a_flow_and_parses_an_error(
    service_client: Client, service_app: Quart, generated: Path
) -> None:
    output = await _generate(service_client, generated)
    # Nothing but the line saying what it generates: no warning, no skipped operation.
    assert output.strip() == f"Generating {PACKAGE}"

    models = _module("models")
    # One class per shape: the error model once, no per-operation copies of a body.
    copies = [name for name in models.__all__ if name.startswith(("Post", "Get", "Delete"))]
    assert copies == []
    assert len(models.__all__) < 30

    api = "api"
    create_user = _module(f"{api}.users.create_user")
    create_account = _module(f"{api}.accounts.create_account")
    get_account = _module(f"{api}.accounts.get_account")
    create_deposit = _module(f"{api}.movements.create_deposit")
    create_withdrawal = _module(f"{api}.movements.create_withdrawal")
    package: Any = importlib.import_module(PACKAGE)

    asgi: Any = service_app  # Quart's ASGI types are narrower than httpx's
    transport = httpx.ASGITransport(app=asgi)  # the serving app, in this test's loop
    base = "http://ledger.test"
    async with package.Client(base_url=base, httpx_args={"transport": transport}) as client:
        registered = await create_user.asyncio_detailed(
            client=client, body=models.NewUser(name="Ada", email="ada@example.com")
        )
    assert registered.status_code == 201
    assert isinstance(registered.parsed, models.NewUserOut)
    token = registered.parsed.token

    async with package.AuthenticatedClient(
        base_url=base, token=token, httpx_args={"transport": transport}
    ) as ada:
        account = await create_account.asyncio(
            client=ada,
            body=models.NewAccount(name="Checking", currency=models.NewAccountCurrency.USD),
        )
        assert isinstance(account, models.AccountOut) and account.balance == 0

        entry = await create_deposit.asyncio(
            account.id, client=ada, body=models.Movement(amount=1000, description="salary")
        )
        assert isinstance(entry, models.EntryOut)
        assert (entry.amount, entry.balance_after) == (1000, 1000)

        refused = await create_withdrawal.asyncio_detailed(
            account.id, client=ada, body=models.Movement(amount=5000)
        )
        assert refused.status_code == 422
        assert isinstance(refused.parsed, models.ErrorOut)  # parsed, not None
        assert refused.parsed.error.code == "insufficient_funds"

        after = await get_account.asyncio(account.id, client=ada)
        assert isinstance(after, models.AccountOut) and after.balance == 1000

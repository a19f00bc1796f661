"""A model in a module of its own, registered in ``service/modules.py``, is known everywhere.

In a temporary copy of the project, as a newcomer would: a new module
``service/budgets/models.py`` with a ``UTCDateTime`` column and a relationship
both ways with the ledger's ``Account``. Then ``alembic check`` must notice the
missing migration, ``alembic revision --autogenerate`` must write one that runs,
passes ``alembic check`` and the project's linters with no hand edits, and the
CLI and the worker must configure the relationship.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.databases import scratch_postgres_database

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

BUDGETS = '''"""Budgets: a spending limit per account, from a moment on."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Model, UTCDateTime

if TYPE_CHECKING:
    from service.ledger.models import Account


class Budget(Model):
    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    limit_amount: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    account: Mapped[Account] = relationship(back_populates="budgets")
'''

ACCOUNT_SIDE = '\n    budgets: Mapped[list[Budget]] = relationship(back_populates="account")'


def _copy_project(destination: Path) -> Path:
    project = destination / "project"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "__pycache__", ".*_cache", "*.db", "*.db-*"
        ),
    )
    return project


def _add_budgets(project: Path) -> None:
    package = project / "service" / "budgets"
    package.mkdir()
    (package / "__init__.py").write_text('"""Budgets."""\n')
    (package / "models.py").write_text(BUDGETS)
    ledger = project / "service" / "ledger" / "models.py"
    source = ledger.read_text()
    account = source.index("class Account(Model):")
    end = source.index("\n\n\nclass", account)
    head, body, tail = source[:account], source[account:end], source[end:]
    body += ACCOUNT_SIDE  # the last line of the class
    head = head.replace(
        "from sqlalchemy.orm import Mapped, mapped_column\n",
        "from sqlalchemy.orm import Mapped, mapped_column, relationship\n",
    )
    head = head.replace(
        "from service.db import Model, UTCDateTime\n",
        "from service.db import Model, UTCDateTime\n\n"
        "if TYPE_CHECKING:\n    from service.budgets.models import Budget\n",
    )
    head = head.replace(
        "from datetime import", "from typing import TYPE_CHECKING\nfrom datetime import"
    )
    ledger.write_text(head + body + tail)
    modules = project / "service" / "modules.py"
    modules.write_text(
        modules.read_text().replace(
            '    "service.ledger.statements",\n',
            '    "service.ledger.statements",\n    "service.budgets.models",\n',
        )
    )


async def _run(project: Path, *command: str, url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def _ok(project: Path, *command: str, url: str) -> str:
    code, output = await _run(project, *command, url=url)
    assert code == 0, f"{' '.join(command)}:\n{output}"
    return output


@pytest.fixture
async def empty_url(service_database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    if service_database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path}/budgets.db"
        return
    async with scratch_postgres_database(service_database_url, "budgets") as url:
        yield url


@pytest.mark.service_committing  # the copy has databases of its own
@pytest.mark.timeout(180)  # several processes of their own: slow on a busy machine
async def test_a_new_model_module_is_known_to_alembic_the_cli_and_the_worker(
    tmp_path: Path, empty_url: str
) -> None:
    project = _copy_project(tmp_path)
    _add_budgets(project)
    alembic = (sys.executable, "-m", "alembic")

    await _ok(project, *alembic, "upgrade", "head", url=empty_url)
    code, output = await _run(project, *alembic, "check", url=empty_url)
    assert code != 0 and "New upgrade operations detected" in output, output
    assert "budgets" in output

    await _ok(project, *alembic, "revision", "--autogenerate", "-m", "budgets", url=empty_url)
    [migration] = (project / "alembic" / "versions").glob("*_budgets.py")
    source = migration.read_text()
    assert "from service.db import UTCDateTime" in source
    assert "UTCDateTime()" in source

    await _ok(project, *alembic, "upgrade", "head", url=empty_url)
    assert "No new upgrade operations detected" in await _ok(
        project, *alembic, "check", url=empty_url
    )
    await _ok(project, str(BIN / "ruff"), "check", str(migration), url=empty_url)
    await _ok(project, str(BIN / "ruff"), "format", "--check", str(migration), url=empty_url)

    # The relationship names Budget by string: it resolves wherever the models are used.
    cli = "from service.cli import main; main()"
    created = await _ok(
        project,
        sys.executable,
        "-c",
        cli,
        "users",
        "create",
        "--name",
        "Ada",
        "--email",
        "ada@example.com",
        url=empty_url,
    )
    assert "user 1 created" in created
    worker = (
        "import service.worker\n"
        "from sqlalchemy.orm import configure_mappers\n"
        "from service.ledger.models import Account\n"
        "configure_mappers()\n"
        "print(Account.budgets.property.mapper.class_.__name__)\n"
    )
    assert (await _ok(project, sys.executable, "-c", worker, url=empty_url)).strip() == "Budget"

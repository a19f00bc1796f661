"""The database's ceiling for a deposit: pgbench running the base's deposit SQL, 32 clients.

The statements are those the base commit (``146505f``) sends for
``POST /accounts/{id}/deposits``, as SQLAlchemy renders them, in one
transaction: the user by token hash, the account ``SELECT ... FOR UPDATE``, the
``UPDATE accounts SET balance``, the ``INSERT INTO entries ... RETURNING``.
pgbench sends them as prepared statements (``-M prepared``), as asyncpg does, one
round trip each, plus BEGIN and END: six, against the base's nine (its pool's
pre-ping costs three).

The ceiling stays the base's SQL on purpose, run on the base's database: a fixed
yardstick while the head changes its statements or its schema (a tokens table,
say). One script per seeded user, each with that user's token hash and accounts
(pgbench picks one at random per transaction), so that every transaction reads
a user by a hash that exists, as the service does.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.seed import Customer

CLIENTS = 32

SCRIPT = """\
-- A deposit of 100 cents, as the base commit's service sends it.
\\set aid {first} + random(0, 1) * ({second} - {first})
BEGIN;
SELECT users.id, users.name, users.email, users.email_key, users.token_hash, users.created_at \
FROM users WHERE users.token_hash = '{token_hash}' LIMIT 1;
SELECT accounts.id, accounts.user_id, accounts.name, accounts.currency, accounts.balance, \
accounts.created_at FROM accounts WHERE accounts.id = :aid AND accounts.user_id = {user_id} \
LIMIT 1 FOR UPDATE \\gset
\\set balance_after :balance + 100
UPDATE accounts SET balance = :balance_after WHERE accounts.id = :aid;
INSERT INTO entries (account_id, amount, balance_after, kind, description, transfer_id, \
created_at) VALUES (:aid, 100, :balance_after, 'deposit', 'bench', NULL, \
now() AT TIME ZONE 'utc') RETURNING entries.id;
END;
"""


async def account_owners(url: str) -> dict[int, int]:
    """Each account's user id, from the (base schema's) database."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, user_id FROM accounts"))
            return dict(rows.tuples().all())
    finally:
        await engine.dispose()


def write_scripts(owners: dict[int, int], customers: list[Customer], directory: Path) -> list[Path]:
    """One script per customer, with their token's hash, their user id and their accounts."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, customer in enumerate(customers):
        first, second = customer.accounts
        path = directory / f"deposit-{number}.sql"
        path.write_text(
            SCRIPT.format(
                first=first,
                second=second,
                user_id=owners[first],
                token_hash=hashlib.sha256(customer.token.encode()).hexdigest(),
            )
        )
        paths.append(path)
    return paths


def run(url: str, scripts: list[Path], seconds: int, *, clients: int = CLIENTS) -> float:
    """Transactions per second of one pgbench run (without the connections' set-up)."""
    parsed = make_url(url)
    command = ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds)]
    command += ["-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432)]
    command += ["-U", parsed.username or "postgres"]
    for script in scripts:
        command += ["-f", f"{script}@1"]
    command.append(parsed.database or "postgres")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    found = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", done.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", done.stdout, re.M)
    if done.returncode != 0 or found is None or (failed and int(failed.group(1))):
        output = done.stdout[-2000:] + done.stderr
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{output}")
    return float(found.group(1))

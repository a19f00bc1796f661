"""API tokens: ``lgr_`` and 40 random characters, shown once, stored only as a SHA-256 hash.

Authentication is one indexed query per request, the few columns it needs, and
no write: a token's ``last_used_at`` is brought up to date at most about once a
minute, after the response, in a short unit of work of its own, so that a GET
stays a read-only unit of work. Nothing about a token's validity is cached
between requests: a revoked token is refused by every worker at once.

With read replicas the user is the caller whose writes a request must see
(``service.db.caller``), and the token's own row must be as fresh as they are:
a process remembers which user a token belongs to (never whether it is valid),
so that a request names its caller before the look-up and reads it from a
server that has the user's last write (a revocation, say). A token found
nowhere on a replica is looked up again on the primary: it may be newer than
the replica.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import string
import time
from datetime import datetime, timedelta
from typing import Any, NoReturn

from quart import Quart, current_app, g, request
from sqlalchemy import Table, bindparam, func, or_, select, update

from service import logs, ratelimit
from service.db import caller, read_from_primary, session, unit_of_work
from service.errors import ApiError
from service.ledger.models import Token, User, utcnow
from service.ledger.schemas import MAX_TOKENS

logger = logging.getLogger(__name__)

PREFIX = "lgr_"
"""Fixed, so that secret scanners recognise a leaked token (as GitHub's ``ghp_``)."""
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LENGTH = 40  # 238 bits
_SHOWN = len(PREFIX) + 8
TOUCH_INTERVAL = timedelta(minutes=1)
_SHAPES = re.compile(rf"{PREFIX}[A-Za-z0-9]{{{_SECRET_LENGTH}}}|[A-Za-z0-9_-]{{43}}")
"""What a token can look like: ours, or one from before prefixes (``token_urlsafe(32)``).
Anything else cannot be a token, and is refused without a look in the database."""
_owners: dict[str, int] = {}
"""Token hash -> its user, as seen by this process: a hint to name the caller before the look-up
(a token never changes owner; whether it is still valid is looked up every time)."""
_scheduled: dict[str, float] = {}
"""Token hash -> monotonic time this process last scheduled a touch of it (ids can be reused:
by SQLite after a rollback, say; a hash names one token)."""


def new_token() -> tuple[str, str]:
    """A fresh secret and the hash to store for it."""
    secret = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LENGTH))
    return secret, hash_token(secret)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    """What ``GET /tokens`` shows of a secret: enough to recognise it, far too little to use."""
    return secret[:_SHOWN]


async def issue(
    user_id: int, name: str, *, expires_in: timedelta | None = None
) -> tuple[Token, str]:
    """A new token of the user, saved in the current unit of work, and its secret.

    The user is the request's caller from now on (a registration has none before):
    with replicas, their next requests read this write.
    """
    await caller(str(user_id))
    secret, token_hash = new_token()
    now = utcnow()
    token = await Token.create(
        user_id=user_id,
        name=name,
        prefix=shown_prefix(secret),
        token_hash=token_hash,
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
    )
    return token, secret


async def require_room_for_a_token(user_id: int) -> None:
    """422 ``too_many_tokens`` if the user holds ``MAX_TOKENS`` already.

    The user's row is locked first (PostgreSQL), so that concurrent requests cannot
    each find room for one more; SQLite's write lock does the same.
    """
    users: Table = User.__table__  # type: ignore[assignment]
    await session.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
    held = await session.scalar(
        select(func.count()).select_from(Token).where(Token.user_id == user_id)
    )
    if (held or 0) >= MAX_TOKENS:
        raise ApiError(
            422,
            "too_many_tokens",
            f"A user may hold at most {MAX_TOKENS} tokens: revoke one (DELETE /tokens/<id>) "
            "before creating another.",
        )


_TOKENS: Table = Token.__table__  # type: ignore[assignment]
# The hottest query there is: Core, built once, with only the columns authentication needs.
_BY_HASH = select(
    _TOKENS.c.id, _TOKENS.c.user_id, _TOKENS.c.expires_at, _TOKENS.c.last_used_at
).where(_TOKENS.c.token_hash == bindparam("token_hash"))


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "A valid `Authorization: Bearer <token>` is required.")


async def authenticate() -> None:
    """Identify the caller from ``Authorization: Bearer <token>``, or answer 401 (or 429).

    The failed-authentication limit bounds the look-ups too: an address's look-ups under
    way count against it until they are over (``ratelimit.reserving``), so that a burst
    of wrong tokens cannot all reach the database before the first failure is counted.
    """
    address = request.remote_addr or "unknown"
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    secret = secret.strip()
    token_hash = hash_token(secret)
    if not (scheme.lower() == "bearer" and _SHAPES.fullmatch(secret)):
        await ratelimit.check("failed_auth", address)
        await _failed(address)
    async with ratelimit.reserving("failed_auth", address):
        row = await _look_up(token_hash)
        now = utcnow()
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            await _failed(address)  # counted while still reserved: never neither
    await ratelimit.hit("user", str(row.user_id))
    g.user_id = row.user_id
    g.token_id = row.id
    logs.set_user(row.user_id)
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
        _schedule_touch(row.id, token_hash)


async def _failed(address: str) -> NoReturn:
    await ratelimit.hit("failed_auth", address)
    raise _unauthorized()


async def _look_up(token_hash: str) -> Any:
    """The token's row, read where the user's own writes are visible (see the module's doc)."""
    owner = _owners.get(token_hash)
    if owner is not None:
        await caller(str(owner))
    row = await _row(token_hash)
    if row is None:
        return await _row(token_hash) if await read_from_primary() else None
    if row.user_id != owner:
        if len(_owners) > 100_000:
            _owners.clear()
        _owners[token_hash] = row.user_id
        if await caller(str(row.user_id)):  # it was read where the user's writes were not yet
            row = await _row(token_hash)
    return row


async def _row(token_hash: str) -> Any:
    return (await session.execute(_BY_HASH, {"token_hash": token_hash})).one_or_none()


def current_user_id() -> int:
    user_id: int = g.user_id
    return user_id


def current_token_id() -> int:
    token_id: int = g.token_id
    return token_id


async def current_user() -> User:
    """The caller's row (one more query: most handlers need only ``current_user_id()``)."""
    user = await User.get(current_user_id())
    if user is None:  # deleted between the two queries
        raise _unauthorized()
    return user


def _schedule_touch(token_id: int, token_hash: str) -> None:
    now = time.monotonic()
    last = _scheduled.get(token_hash)
    if last is not None and now - last < TOUCH_INTERVAL.total_seconds():
        return  # an earlier request of this process has it in hand
    if len(_scheduled) > 10_000:
        _scheduled.clear()
    _scheduled[token_hash] = now
    g.touch_token = token_id


async def touch(token_id: int, at: datetime) -> None:
    """Set ``last_used_at``, unless another worker did within the interval."""
    try:
        async with unit_of_work():
            await session.execute(
                update(Token)
                .where(
                    Token.id == token_id,
                    or_(Token.last_used_at.is_(None), Token.last_used_at <= at - TOUCH_INTERVAL),
                )
                .values(last_used_at=at)
            )
    except Exception:
        logger.warning("could not record the use of token %s", token_id, exc_info=True)


def init_app(app: Quart) -> None:
    """Touch used tokens once each request is over: in a background task, or at once in
    the request's task, after its unit of work, with ``JOBS_BACKEND=eager`` (tests)."""

    async def teardown(exc: BaseException | None) -> None:
        token_id: int | None = g.pop("touch_token", None)
        if token_id is None:
            return
        if current_app.config.get("JOBS_BACKEND") == "eager":
            await touch(token_id, utcnow())
        else:
            current_app.add_background_task(touch, token_id, utcnow())

    # Registered first, so that it runs after the layer's teardown has ended the unit of work.
    app.teardown_request_funcs[None].insert(0, teardown)

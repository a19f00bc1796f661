"""API tokens: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from quart import g, request

from service.errors import ApiError
from service.ledger.models import User


def new_token() -> tuple[str, str]:
    """A fresh token and the hash to store for it."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def authenticate() -> None:
    """Load the caller from ``Authorization: Bearer <token>`` into ``g.user``, or answer 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    user = None
    if scheme.lower() == "bearer" and token.strip():
        user = await User.query.filter_by(token_hash=hash_token(token.strip())).first()
    if user is None:
        raise ApiError(401, "unauthorized", "A valid `Authorization: Bearer <token>` is required.")
    g.user = user


def current_user() -> User:
    user: User = g.user
    return user

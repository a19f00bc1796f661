"""Request and response bodies: what validates requests also documents them (OpenAPI)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal, Self

import pycountry
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

MAX_AMOUNT = 10**12
MAX_BALANCE = 10**15
"""No balance may exceed this (10^13 in major units): far below BIGINT's 9.2 * 10^18, so no
sum of balances or of a statement's movements can overflow the column either."""
MAX_TOKEN_DAYS = 3650
MAX_TOKENS = 100
"""Tokens one user may hold at once (expired ones included, until revoked)."""


def _integral(value: object) -> object:
    """JSON Schema's ``integer`` includes ``100.0``: take it as 100. Strings and booleans stay
    refused (strict), and every number with a fraction: the API parses them exactly (a
    ``Decimal``), so ``0.99999999999999999999`` is refused, not rounded to 1."""
    if isinstance(value, Decimal):
        # Beyond 20 digits it is out of range anyway; never build a huge int from `1e999999999`.
        if value.is_finite() and value.adjusted() < 20 and value == value.to_integral_value():
            return int(value)
        return value
    if isinstance(value, float) and value.is_integer():  # a Python caller's
        return int(value)
    return value


_INTEGRAL = BeforeValidator(_integral)  # after the constraints, so that they stay documented
Amount = Annotated[
    int, Field(gt=0, le=MAX_AMOUNT, strict=True, description="Minor units (cents)"), _INTEGRAL
]
# Any text is stored verbatim, except the NUL character, which PostgreSQL cannot store.
NO_NUL = r"^[^\x00]*$"
# Stored verbatim; a name that starts or ends with white space (or is nothing else) is refused,
# rather than trimmed: what the schema documents is exactly what is accepted and stored.
# White space spelt out: `\s` means other characters to pydantic's regex engine (U+0085) than
# to JSON Schema's (U+FEFF), and a client would then send names the schema allows and we refuse.
_SPACE = r"\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NAME = rf"^[^{_SPACE}\x00](?:[^\x00]*[^{_SPACE}\x00])?$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NAME)]
Description = Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]
AccountId = Annotated[int, Field(strict=True, ge=1, le=2**31 - 1), _INTEGRAL]
CURRENCIES = sorted(currency.alpha_3 for currency in pycountry.currencies)
"""ISO 4217, as the pycountry package has it."""


def _iso_4217(code: str) -> str:
    if pycountry.currencies.get(alpha_3=code) is None:
        raise ValueError("not an ISO 4217 currency code")
    return code


Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{3}$"),
    AfterValidator(_iso_4217),
    WithJsonSchema({"type": "string", "enum": CURRENCIES, "examples": ["USD"]}),
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewUser(Body):
    name: Name
    email: EmailStr


class UserOut(BaseModel):
    id: int
    name: str
    email: str
    created_at: datetime


class NewUserOut(UserOut):
    token: str = Field(description="Shown this once; only its hash is stored.")


class NewToken(Body):
    name: Name
    expires_in_days: (
        Annotated[int, Field(strict=True, ge=1, le=MAX_TOKEN_DAYS), _INTEGRAL] | None
    ) = Field(
        default=None,
        description="The token stops working after this many days; never, if left out.",
    )


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str | None = Field(
        description="The secret's first characters; null for a token issued before prefixes"
    )
    created_at: datetime
    last_used_at: datetime | None = Field(description="Kept to within about a minute")
    expires_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret, shown this once; only its hash is stored.")


class TokenList(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None


class NewAccount(Body):
    name: Name
    currency: Currency


class AccountOut(BaseModel):
    id: int
    name: str
    currency: str
    balance: int
    created_at: datetime


class AccountPage(BaseModel):
    items: list[AccountOut]
    next_cursor: str | None


class Movement(Body):
    amount: Amount
    description: Description | None = None


class EntryOut(BaseModel):
    id: int
    account_id: int
    amount: int
    balance_after: int
    kind: Literal["deposit", "withdrawal", "transfer_in", "transfer_out"]
    description: str | None
    created_at: datetime


class EntryPage(BaseModel):
    items: list[EntryOut]
    next_cursor: str | None


class NewTransfer(Body):
    from_account_id: AccountId
    to_account_id: AccountId
    amount: Amount
    description: Description | None = None


class TransferOut(BaseModel):
    id: int
    from_account_id: int
    to_account_id: int
    amount: int
    description: str | None
    created_at: datetime


class PageQuery(Body):
    """A misspelt parameter (``?limt=10``) is refused, not silently ignored."""

    limit: int = Field(default=50, ge=1, le=100)
    cursor: str | None = None


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_date(value: object) -> object:
    """A day written ``YYYY-MM-DD`` (or a ``date``, from Python), nothing else: pydantic would
    take ``86400`` for a Unix time and ``2026-01-01T00:00:00`` for a day."""
    if (isinstance(value, str) and _ISO_DATE.fullmatch(value)) or type(value) is date:
        return value
    raise ValueError("must be a date written YYYY-MM-DD")


Day = Annotated[date, BeforeValidator(_iso_date)]


class Period(BaseModel):
    """Days, inclusive, in UTC; written ``from`` and ``to`` (Python keywords, hence aliases)."""

    model_config = ConfigDict(
        extra="forbid", validate_by_alias=True, validate_by_name=True, serialize_by_alias=True
    )

    from_: Day = Field(alias="from", examples=["2026-01-01"])
    to: Day = Field(le=date.max - timedelta(days=1), examples=["2026-01-31"])

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.to < self.from_:
            raise ValueError("`to` must not be before `from`")
        return self


class NewStatement(Period):
    pass


class StatementOut(Period):
    id: int
    account_id: int
    status: Literal["pending", "ready", "failed"]
    opening_balance: int | None = Field(description="At the start of `from`; null until ready")
    closing_balance: int | None = Field(description="At the end of `to`")
    total_in: int | None
    total_out: int | None = Field(description="Positive: what left the account")
    entry_count: int | None
    failure_reason: str | None
    created_at: datetime
    completed_at: datetime | None

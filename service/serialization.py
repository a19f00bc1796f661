"""Responses serialized in one pass by pydantic's Rust serializer, not through Python objects.

quart-schema turns a response model into Python objects (``model_dump``), which
Python's ``json`` then encodes, sorting every key: two walks over the data, and a
``TypeAdapter`` built for every dict. Here a view's model becomes its JSON body at
once (``model_dump_json``), and other JSON (dicts and lists: error bodies, replays)
goes through ``pydantic_core.to_json``. Dates and datetimes come out in ISO 8601, as
the OpenAPI document says; text as UTF-8 rather than ``\\u`` escapes.
"""

from __future__ import annotations

from functools import wraps
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json
from quart import Quart
from quart.json.provider import DefaultJSONProvider
from werkzeug.datastructures import Headers

__all__ = ["FastJSONProvider", "init_app"]

_MIMETYPE = "application/json"


class FastJSONProvider(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # an indent, say: the usual way
            return super().dumps(obj, **kwargs)
        return to_json(obj).decode()


def init_app(app: Quart) -> None:
    """Serialize the app's JSON so; call it after QuartSchema, whose hooks it goes around."""
    app.json = FastJSONProvider(app)
    make_response = app.make_response

    @wraps(make_response)
    async def made(result: Any) -> Any:
        if isinstance(result, tuple):
            value, *rest = result
            if len(rest) == 2 and isinstance(rest[1], dict):
                rest[1] = Headers(rest[1])  # else quart-schema builds a TypeAdapter for it
            result = (_body(app, value), *rest)
        else:
            result = _body(app, result)
        return await make_response(result)

    app.make_response = made  # type: ignore[method-assign]


def _body(app: Quart, value: Any) -> Any:
    if isinstance(value, BaseModel):
        return app.response_class(value.model_dump_json(), mimetype=_MIMETYPE)
    if isinstance(value, dict | list):
        return app.response_class(to_json(value), mimetype=_MIMETYPE)
    return value

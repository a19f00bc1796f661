"""A test client through which an exception the app lets propagate reaches the test.

In testing mode Quart propagates a handler's exception, but its ASGI layer then
answers the test client with an HTML traceback page: the test would only see a
500. This client raises the exception itself in the test instead, as the
README promises ("in testing or debug mode the exception propagates").
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from quart import Quart, Response
from quart.signals import got_request_exception
from quart.testing import QuartClient

__all__ = ["PropagatingClient", "raise_propagated_errors"]

# Set by the client for the request it makes; the request's task inherits it.
_propagated: ContextVar[list[BaseException] | None] = ContextVar(
    "service_testing_propagated", default=None
)


class PropagatingClient(QuartClient):
    """Quart's test client; a request whose exception propagated raises it here."""

    async def open(self, *args: Any, **kwargs: Any) -> Response:
        raised: list[BaseException] = []
        token = _propagated.set(raised)
        try:
            response = await super().open(*args, **kwargs)
        finally:
            _propagated.reset(token)
        if raised:
            raise raised[0]
        return response


def raise_propagated_errors(app: Quart) -> None:
    """Make ``app.test_client()`` raise, in the test, what the app lets propagate."""
    app.test_client_class = PropagatingClient  # type: ignore[assignment]  # as Quart's own
    got_request_exception.connect(_record, sender=app, weak=False)


def _record(sender: Quart, exception: BaseException, **extra: Any) -> None:
    propagate = sender.config["PROPAGATE_EXCEPTIONS"]
    if propagate is None:
        propagate = sender.testing or sender.debug
    raised = _propagated.get()
    if propagate and raised is not None:
        raised.append(exception)

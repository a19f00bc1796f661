"""The Quart extension: an engine per serving lifetime, a unit of work per request."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from quart import Quart, current_app, request
from quart.signals import got_request_exception
from quart.typing import ResponseTypes
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from werkzeug.exceptions import Conflict, HTTPException, InternalServerError, ServiceUnavailable

from service.db._engine import make_engine
from service.db._session import current_unit_of_work, session
from service.db._unit_of_work import UnitOfWork

__all__ = ["Database"]

_EXTENSION = "service.db"
_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Configuration keys read when serving starts, and the make_engine() option each sets.
_TIMEOUT_OPTIONS = {
    "DATABASE_CONNECT_TIMEOUT": "connect_timeout",
    "DATABASE_COMMAND_TIMEOUT": "command_timeout",
    "DATABASE_POOL_TIMEOUT": "pool_timeout",
}
# SQLSTATEs of a database that cannot be reached: connection exception (class 08), administrator
# or crash shutdown, and "the database system is starting up / shutting down".
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# What a response for a failed commit must not inherit from the one it replaces.
_REPLACED_HEADERS = frozenset({"content-type", "content-length", "location", "etag"})


logger = logging.getLogger(__name__)


@dataclass
class _AppState:
    options: dict[str, Any] = field(default_factory=dict)
    engine: AsyncEngine | None = None


class Database:
    """Binds the unit of work to a Quart app.

    ``Database(app)`` or ``db = Database(); db.init_app(app)``. The engine is
    made from ``app.config["DATABASE_URL"]`` when serving starts and disposed
    when it stops; ``engine_options`` go to ``make_engine``, on top of the
    timeouts ``DATABASE_CONNECT_TIMEOUT``, ``DATABASE_COMMAND_TIMEOUT`` and
    ``DATABASE_POOL_TIMEOUT`` (seconds) when the config has them. Each request
    is a unit of work: committed when the final status is below 400, rolled
    back otherwise, and the session always removed. A request that fails because
    the database cannot be reached (refused, dropped or timed-out connection,
    no pooled connection in time) answers 503 wherever it failed; the app's
    error handler for ``Exception``, if it registers one, replaces that.
    """

    def __init__(self, app: Quart | None = None, **engine_options: Any) -> None:
        self.engine_options = engine_options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        if _EXTENSION in app.extensions:
            raise RuntimeError("A Database is already registered on this app; call init_app once.")
        state = _AppState(options=dict(self.engine_options))
        app.extensions[_EXTENSION] = state
        hooks = _RequestHooks(state)
        app.before_serving(hooks.start)
        app.after_serving(hooks.stop)
        # First before_request to run, and - since Quart runs after_request and
        # teardown functions in reverse order - last after_request and teardown:
        # the commit decision sees the status every other hook has settled on.
        app.before_request_funcs[None].insert(0, hooks.begin_request)
        app.after_request_funcs[None].insert(0, hooks.end_request)
        app.teardown_request_funcs[None].insert(0, hooks.teardown_request)
        got_request_exception.connect(hooks.on_exception, sender=app, weak=False)
        app.register_error_handler(Exception, _unavailable)

    @property
    def engine(self) -> AsyncEngine:
        """The current app's engine, while it is serving."""
        engine = _state(current_app).engine
        if engine is None:
            raise RuntimeError(
                "The database engine exists only while the app is serving: run it under "
                "Hypercorn, or use `async with app.test_app():` in tests."
            )
        return engine


class _RequestHooks:
    """One app's lifecycle hooks, bound to its state (no lookup per request)."""

    def __init__(self, state: _AppState) -> None:
        self.state = state

    async def start(self) -> None:
        config = current_app.config
        timeouts = {
            option: config[key] for key, option in _TIMEOUT_OPTIONS.items() if key in config
        }
        engine = make_engine(config["DATABASE_URL"], **{**timeouts, **self.state.options})
        self.state.engine = engine
        if session.session_factory.kw.get("bind") is None:
            # The default for units of work outside requests; requests carry their app's.
            session.session_factory.configure(bind=engine)

    async def stop(self) -> None:
        engine = self.state.engine
        if engine is None:
            return
        self.state.engine = None
        await engine.dispose()
        if session.session_factory.kw.get("bind") is engine:
            session.session_factory.configure(bind=None)

    async def begin_request(self) -> None:
        engine = self.state.engine
        if engine is None:
            raise RuntimeError(
                "A request arrived before the app started serving, so it has no database engine."
                " In tests, use `async with app.test_app():` around the test client."
            )
        UnitOfWork(readonly=request.method in _READ_ONLY_METHODS, bind=engine).begin()

    async def end_request(self, response: ResponseTypes) -> ResponseTypes:
        # Ends the unit here rather than at teardown, which Quart skips for a
        # preserved request context (`async with app.test_client()`).
        unit = current_unit_of_work()
        if unit is None:
            return response
        try:
            await unit.end(commit=response.status_code < 400)
        except Exception as error:
            # Raising here would make Quart run every after_request function
            # again; answer the client with the failure instead.
            logger.exception("commit failed; the request's changes were rolled back")
            return await _error_response(error, response)
        return response

    async def on_exception(self, sender: Quart, exception: BaseException, **extra: Any) -> None:
        # Sent for an unhandled exception, before it propagates (testing, debug);
        # teardown may then never come, if the request context is preserved.
        await self.teardown_request(exception)

    async def teardown_request(self, exc: BaseException | None) -> None:
        # For whatever did not end above: above all a handler cancelled because
        # the client went away, where neither after_request nor the signal run.
        unit = current_unit_of_work()
        if unit is not None:
            await unit.end(commit=False)


def _state(app: Quart) -> _AppState:
    try:
        state: _AppState = app.extensions[_EXTENSION]
    except KeyError:
        raise RuntimeError("This app has no Database. Did you forget to call 'init_app'?") from None
    return state


async def _error_response(error: Exception, replaced: ResponseTypes) -> ResponseTypes:
    """The response for a failed commit, rendered by the app's own error handlers.

    It keeps the headers other hooks set (CORS, say), but none that describe
    the body or the resource of the response it replaces.
    """
    http_error: HTTPException
    if isinstance(error, IntegrityError):
        http_error = Conflict("The changes conflict with data already stored; they were not saved.")
    elif _unreachable(error):
        http_error = ServiceUnavailable(
            "The database could not be reached to complete the request. Retry later."
        )
    else:
        http_error = InternalServerError("The changes could not be committed.")
    response = await current_app.make_response(await current_app.handle_http_exception(http_error))
    for name, value in replaced.headers.items():
        if name.lower() not in _REPLACED_HEADERS and name not in response.headers:
            response.headers.add(name, value)
    return response


async def _unavailable(error: Exception) -> ResponseTypes:
    """Answer 503 for an error raised because the database cannot be reached.

    Registered for ``Exception``; any other error is raised again, exactly as
    if no handler had been found (a 500, or propagated in testing and debug).
    """
    if not _unreachable(error):
        raise error
    logger.warning("the database could not be reached; answering 503", exc_info=error)
    unavailable = ServiceUnavailable(
        "The database could not be reached; nothing was saved. Retry later."
    )
    return await current_app.make_response(await current_app.handle_http_exception(unavailable))


def _unreachable(error: BaseException) -> bool:
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    # The driver's own error, raised as is or wrapped (a plain DBAPIError) by SQLAlchemy.
    cause: BaseException | None = error
    while cause is not None:
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(cause, OSError) or (
            isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
        ):
            return True
        cause = cause.__cause__
    return False

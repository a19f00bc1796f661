"""The Quart extension: an engine per serving lifetime, a unit of work per request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from quart import Quart, Request, current_app, request
from quart.cli import ScriptInfo
from quart.signals import (
    appcontext_pushed,
    got_request_exception,
    request_started,
    websocket_started,
)
from quart.typing import ResponseTypes
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import (
    Conflict,
    HTTPException,
    InternalServerError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
)

from service.db import _causal as causal
from service.db._cli import in_unit_of_work
from service.db._context import RolledBackError, current_unit_of_work
from service.db._engine import engine_options, make_engine
from service.db._outage import OUTAGE_ERRORS, is_outage
from service.db._query import NotFoundError
from service.db._replica_start import start_replicas, stop_replicas
from service.db._replicas import ReplicaSet, ReplicaStats
from service.db._session import session
from service.db._unit import UnitOfWork
from service.db.quart._contexts import (
    EXTENSION,
    detach_background_task,
    install,
    websocket_entry,
)

__all__ = ["Database", "streaming_body"]

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a response for a failed commit must not inherit from the one it replaces.
_REPLACED_HEADERS = frozenset({"content-type", "content-length", "location", "etag"})
_STREAMING = "__service_db_streaming_body__"
_HTTP1 = frozenset({"1.0", "1.1"})
# A row changed or gone under an update (a version_id_col mismatch) is a conflict like a
# unique violation: the client may read again and retry.
_CONFLICTS = (IntegrityError, StaleDataError)

logger = logging.getLogger(__name__)

_View = TypeVar("_View", bound=Callable[..., Any])


def streaming_body(view: _View) -> _View:
    """Let this view read its request body as a stream, outside the layer's promise.

    Every other request's body is received in full (bounded by ``MAX_CONTENT_LENGTH``
    and ``BODY_TIMEOUT``) before anything in the request may touch the database, so
    that no transaction or pooled connection waits on a slow client. A view
    decorated with this gets the request as it arrives instead: if it, or a hook
    before it, uses the database before the body has arrived, the transaction waits
    on the client.
    """
    setattr(view, _STREAMING, True)
    return view


@dataclass
class _AppState:
    options: dict[str, Any] = field(default_factory=dict)
    engine: AsyncEngine | None = None
    replicas: ReplicaSet | None = None


class Database:
    """Binds the unit of work to a Quart app.

    ``Database(app)`` or ``db = Database(); db.init_app(app)``. The engine is
    made from ``app.config["DATABASE_URL"]`` when serving starts and disposed
    when it stops; ``engine_options`` go to ``make_engine``, on top of
    ``DATABASE_CONNECT_TIMEOUT``, ``DATABASE_COMMAND_TIMEOUT``,
    ``DATABASE_POOL_TIMEOUT``, ``DATABASE_POOL_SIZE`` and ``DATABASE_MAX_OVERFLOW``
    when the config has them.

    Each request is a unit of work: its body is received first, then it is
    committed when the final status is below 400, rolled back otherwise, and the
    session always removed. The extension changes how the app answers two kinds
    of error, and nothing else: a database that cannot be reached answers 503, and
    a constraint violation the handler did not catch answers 409, both rendered by
    the app's own handlers for HTTP errors.
    """

    def __init__(self, app: Quart | None = None, **engine_options: Any) -> None:
        self.engine_options = engine_options
        self._apps: list[Quart] = []
        self._commands: list[click.Command] = []
        if app is not None:
            self.init_app(app)

    def command(
        self, name: str | None = None, **attrs: Any
    ) -> Callable[[Callable[..., Awaitable[Any]]], click.Command]:
        """Add an async command to the app's CLI; each run is one unit of work.

        ``@db.command("seed")`` over an ``async def`` (with ``@click.option`` and
        ``@click.argument`` below it, as usual). It runs in the app's context, on
        its ``DATABASE_URL``, and commits when it succeeds (exit status 0); an
        exception or a non-zero exit rolls back.
        """

        def decorator(body: Callable[..., Awaitable[Any]]) -> click.Command:
            make: Callable[[Callable[..., Any]], click.Command] = click.command(name, **attrs)
            command = make(in_unit_of_work(body, setting=_app_context))
            self._commands.append(command)
            for app in self._apps:
                app.cli.add_command(command)
            return command

        return decorator

    def init_app(self, app: Quart) -> None:
        if EXTENSION in app.extensions:
            raise RuntimeError("A Database is already registered on this app; call init_app once.")
        state = _AppState(options=dict(self.engine_options))
        app.extensions[EXTENSION] = state
        self._apps.append(app)
        for command in self._commands:
            app.cli.add_command(command)
        install()
        hooks = _RequestHooks(state)
        # First, whenever the app's other hooks were registered: they may use the database.
        app.before_serving_funcs.insert(0, hooks.start)
        app.after_serving(hooks.stop)  # moved last when serving starts (``start``)
        appcontext_pushed.connect(detach_background_task, sender=app, weak=False)
        websocket_started.connect(websocket_entry, sender=app, weak=False)
        # The unit of work begins when the request starts, before every before_request
        # hook and URL value preprocessor, whatever order they were registered in.
        request_started.connect(hooks.begin_request, sender=app, weak=False)
        # Quart runs after_request and teardown functions in reverse order, so the one
        # inserted first runs last: the commit decision sees the status every other
        # hook has settled on.
        app.after_request_funcs[None].insert(0, hooks.end_request)
        app.teardown_request_funcs[None].insert(0, hooks.teardown_request)
        got_request_exception.connect(hooks.on_exception, sender=app, weak=False)
        # For these classes only: Quart looks handlers up along the exception's class
        # hierarchy, so one registered for Exception would also receive every HTTP error.
        for error_class in OUTAGE_ERRORS:
            app.register_error_handler(error_class, _unavailable)
        for conflict in _CONFLICTS:
            app.register_error_handler(conflict, _conflict)
        app.register_error_handler(NotFoundError, _not_found)

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

    @property
    def replica_stats(self) -> ReplicaStats | None:
        """The current app's replica counters (``None`` without ``DATABASE_REPLICA_URLS``)."""
        replicas = _state(current_app).replicas
        return None if replicas is None else replicas.stats


class _RequestHooks:
    """One app's lifecycle hooks, bound to its state (no lookup per request)."""

    def __init__(self, state: _AppState) -> None:
        self.state = state

    async def start(self) -> None:
        app: Quart = current_app._get_current_object()  # type: ignore[attr-defined]
        # Every hook is registered by now: the engine is disposed after all the others ran.
        app.after_serving_funcs.remove(self.stop)
        app.after_serving_funcs.append(self.stop)
        config = app.config
        options = {**engine_options(config), **self.state.options}
        engine = make_engine(config["DATABASE_URL"], **options)
        self.state.engine = engine
        # replicas: polled from now on, if DATABASE_REPLICA_URLS names any
        self.state.replicas = await start_replicas(config, engine, options)
        if session.session_factory.kw.get("bind") is None:
            # The default for units of work outside requests; requests carry their app's.
            session.session_factory.configure(bind=engine)

    async def stop(self) -> None:
        engine = self.state.engine
        if engine is None:
            return
        self.state.engine = None
        replicas, self.state.replicas = self.state.replicas, None
        if replicas is not None:  # replicas
            await stop_replicas(replicas)
        await engine.dispose()
        if session.session_factory.kw.get("bind") is engine:
            session.session_factory.configure(bind=None)

    async def begin_request(self, sender: Quart, **extra: Any) -> None:
        engine = self.state.engine
        if engine is None:
            raise RuntimeError(
                "A request arrived before the app started serving, so it has no database engine."
                " In tests, use `async with app.test_app():` around the test client."
            )
        current: Request = request._get_current_object()  # type: ignore[attr-defined]
        if _announces_body(current) and not _streams_body(sender, current):
            await _receive_body(current)
        if self.state.replicas is not None:  # replicas: the causal token the client sent back
            causal.begin_request(current.headers)
        readonly = current.method in _READ_ONLY_METHODS
        UnitOfWork(readonly=readonly, bind=engine, entry="request").begin()

    async def end_request(self, response: ResponseTypes) -> ResponseTypes:
        # Ends the unit here rather than at teardown, which Quart skips for a
        # preserved request context (`async with app.test_client()`).
        unit = current_unit_of_work()
        if unit is None:
            return response
        try:
            status = response.status_code
            await unit.end(commit=status < 400, status=status)
        except RolledBackError as error:
            logger.error(
                "The handler of %s %s caught %s, which had rolled back the unit of work's "
                "earlier writes, then answered %d: answering with an error instead, nothing "
                "was saved. Wrap the attempt in `async with unit_of_work():` (a savepoint) and "
                "catch the error around it.",
                request.method,
                request.path,
                type(error.cause).__name__,
                response.status_code,
                exc_info=error.cause,
            )
            return await _error_response(error.cause, response)
        except Exception as error:
            # Raising here would make Quart run every after_request function
            # again; answer the client with the failure instead.
            logger.exception("commit failed; the request's changes were rolled back")
            return await _error_response(error, response)
        if self.state.replicas is not None:  # replicas: the position of what it committed
            await causal.end_request(self.state.replicas, response.headers)
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


def _app_context() -> AbstractAsyncContextManager[None]:
    """A command's setting: the app the CLI loaded, its context, its engine (by default)."""
    app = click.get_current_context().ensure_object(ScriptInfo).load_app()

    @asynccontextmanager
    async def around() -> AsyncIterator[None]:
        async with app.app_context():
            yield None

    return around()


def _streams_body(app: Quart, request: Request) -> bool:
    endpoint = request.endpoint
    view = app.view_functions.get(endpoint) if endpoint is not None else None
    return getattr(view, _STREAMING, False)


async def _receive_body(request: Request) -> None:
    """Wait for the whole body, within ``BODY_TIMEOUT``, before the database may be used.

    A body over ``MAX_CONTENT_LENGTH`` raises 413 as it arrives; one that does not
    arrive in time, 408. The body stays available to the view.
    """
    try:
        async with asyncio.timeout(request.body_timeout):
            await request.body
    except TimeoutError:
        raise RequestTimeout(
            "The request body did not arrive in time; nothing was saved."
        ) from None


def _announces_body(request: Request) -> bool:
    """Whether a body may follow the headers: in HTTP/1, a non-zero length or chunks.

    One pass over the headers: a werkzeug lookup of a header that is absent raises
    (and catches) an exception, the most expensive thing a GET would do here.
    """
    if request.http_version not in _HTTP1:
        return True  # HTTP/2 and 3 need neither header to send a body
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered == "transfer-encoding" or (lowered == "content-length" and value != "0"):
            return True
    return False


def _state(app: Quart) -> _AppState:
    try:
        state: _AppState = app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError("This app has no Database. Did you forget to call 'init_app'?") from None
    return state


async def _render(http_error: HTTPException) -> ResponseTypes:
    """``http_error`` as the app's own handlers for HTTP errors render it."""
    return await current_app.make_response(await current_app.handle_http_exception(http_error))


def _conflict_error() -> Conflict:
    return Conflict("The changes conflict with data already stored; they were not saved.")


async def _error_response(error: Exception, replaced: ResponseTypes) -> ResponseTypes:
    """The response for a failed commit, rendered by the app's own error handlers.

    It keeps the headers other hooks set (CORS, say), but none that describe
    the body or the resource of the response it replaces.
    """
    http_error: HTTPException
    if isinstance(error, _CONFLICTS):
        http_error = _conflict_error()
    elif is_outage(error):
        http_error = ServiceUnavailable(
            "The database could not be reached to complete the request. Retry later."
        )
    else:
        http_error = InternalServerError("The changes could not be committed.")
    response = await _render(http_error)
    for name, value in replaced.headers.items():
        if name.lower() not in _REPLACED_HEADERS and name not in response.headers:
            response.headers.add(name, value)
    return response


async def _unavailable(error: Exception) -> ResponseTypes:
    """Answer 503 for an error raised because the database cannot be reached or used.

    Registered for the classes such an error can arrive as; any other error of
    those classes is raised again, exactly as if no handler had been found (a
    500, or propagated in testing and debug).
    """
    if not is_outage(error):
        raise error
    logger.warning("the database could not be reached; answering 503", exc_info=error)
    return await _render(
        ServiceUnavailable("The database could not be reached; nothing was saved. Retry later.")
    )


async def _not_found(error: NotFoundError) -> ResponseTypes:
    """``get_or_404()`` and its kin found nothing: Quart's 404, by the app's own handlers."""
    return await _render(NotFound(error.description))


async def _conflict(error: Exception) -> ResponseTypes:
    """A conflict the handler did not catch: 409, as the same conflict at COMMIT.

    A constraint violated, or a row that changed or vanished under an update.
    """
    logger.info("a conflict with stored data; answering 409: %s", error)
    return await _render(_conflict_error())

"""Relationships and expired attributes under asyncio: loaded explicitly, or a clear error.

Reading an attribute that is not loaded (a lazy relationship, a column expired by
a rollback) would have the ORM query the database from inside attribute access,
which asyncio cannot do: SQLAlchemy then raises ``MissingGreenlet`` with a message
no handler author can act on. The layer refuses that load before it starts and
says which attribute it was and how to load it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import (
    InstanceState,
    ORMExecuteState,
    QueryableAttribute,
    RelationshipProperty,
    joinedload,
    selectinload,
)
from sqlalchemy.orm.strategy_options import _AbstractLoad
from sqlalchemy.util.concurrency import in_greenlet

from service.db._readonly import refuse_writes
from service.db._session import _Session

__all__ = ["NotLoadedError", "eager", "relationship_names"]


class NotLoadedError(RuntimeError):
    """An attribute that is not loaded was read, and loading it needs the database."""


def relationship_names(model: type[Any], relationships: tuple[Any, ...]) -> list[str]:
    """The names of ``relationships`` of ``model``: attributes (``Book.author``) or names."""
    mapper = inspect(model)
    names = []
    for relationship in relationships:
        name = relationship if isinstance(relationship, str) else relationship.key
        if name not in mapper.relationships:
            known = ", ".join(sorted(mapper.relationships.keys())) or "none"
            raise ValueError(
                f"{model.__name__} has no relationship {name!r} (its relationships: {known})"
            )
        names.append(name)
    return names


def eager(model: type[Any], relationships: tuple[Any, ...]) -> list[_AbstractLoad]:
    """Loader options for ``relationships``: a join for a single object, a second
    ``SELECT ... IN`` for a collection (one query per relationship, never one per row)."""
    mapper = inspect(model)
    options: list[_AbstractLoad] = []
    for name in relationship_names(model, relationships):
        attribute: QueryableAttribute[Any] = getattr(model, name)
        prop = mapper.relationships[name]
        options.append(selectinload(attribute) if prop.uselist else joinedload(attribute))
    return options


def _check(state: ORMExecuteState) -> None:
    # The layer's one listener on every statement its sessions run (each one costs a call).
    if in_greenlet():
        refuse_writes(state)
        return
    _refuse_implicit_io(state)


def _refuse_implicit_io(state: ORMExecuteState) -> None:
    # The layer's sessions run every statement inside greenlet_spawn; a statement
    # outside it comes from attribute access, where it could only fail.
    if state.is_relationship_load:
        path = state.loader_strategy_path
        prop = path[-1] if path is not None and len(path) else None
        owner = state.lazy_loaded_from
        if isinstance(prop, RelationshipProperty):
            raise NotLoadedError(_relationship_message(prop, owner))
    refreshed = state.load_options._refresh_state
    raise NotLoadedError(_expired_message(refreshed))


def _relationship_message(prop: RelationshipProperty[Any], owner: InstanceState[Any] | None) -> str:
    model = prop.parent.class_.__name__
    target = prop.mapper.class_.__name__
    name = f"{model}.{prop.key}"
    obj = model.lower()
    return (
        f"{name} is not loaded, and loading it needs the database, which attribute access "
        f"cannot do under asyncio. Load it with the query: "
        f"`await {model}.query.load({name}).all()`, or on the object: "
        f"`await {obj}.load({model}.{prop.key})`. To have {target} always loaded with "
        f'{model}, declare `relationship(lazy="selectin")` (a collection) or '
        f'`lazy="joined"` (a single object).'
    )


def _expired_message(state: InstanceState[Any] | None) -> str:
    if state is None:
        return (
            "An attribute that is not loaded was read, and loading it needs the database, "
            "which attribute access cannot do under asyncio."
        )
    model = state.class_.__name__
    unloaded = sorted(state.unloaded)
    names = ", ".join(f"{model}.{name}" for name in unloaded) or model
    return (
        f"{names} is not loaded (the object was expired: its unit of work rolled back, or it "
        f"was refreshed), and loading it needs the database, which attribute access cannot "
        f"do under asyncio. Load the object again (`await {model}.get(pk)`) or refresh it "
        f"(`await session.refresh(obj)`) before reading it."
    )


def listen() -> None:
    """Install this module's session listener (``_listeners.install``)."""
    event.listen(_Session, "do_orm_execute", _check)

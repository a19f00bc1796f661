"""The one place that names the service's modules of models and jobs.

A module that declares models (``Model`` subclasses) or jobs (``@job()``) is listed
in ``MODULES``. The app, Alembic (``alembic/env.py``), the ``service`` command and
the Celery worker all call ``load()`` before they do anything else, so a model in a
new module is known alike to ``alembic revision --autogenerate``, ``alembic check``,
relationships that name it by string, and the worker; a job module likewise.
"""

from __future__ import annotations

import importlib

from sqlalchemy.orm import configure_mappers

__all__ = ["MODULES", "load"]

MODULES: tuple[str, ...] = (
    "service.jobs",
    "service.ledger.models",
    "service.ledger.statements",
    "service.ledger.maintenance",
)
"""Every module of models or jobs, imported by ``load()`` in this order."""


def load() -> None:
    """Import every module in ``MODULES``, then configure the mappers.

    Configuring at once makes a relationship that names an unknown class fail
    here, at start-up, with SQLAlchemy's message, rather than at the first query.
    """
    for name in MODULES:
        importlib.import_module(name)
    configure_mappers()

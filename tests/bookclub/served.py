"""The book club served by Hypercorn: ``hypercorn tests.bookclub.served:app``, configured by
the environment (``DATABASE_URL``, ``AUDIT_DATABASE_URL``, ``JOBS_BACKEND``)."""

from __future__ import annotations

import os

from tests.bookclub.app import create_app

app = create_app(
    {
        key: os.environ[key]
        for key in ("DATABASE_URL", "AUDIT_DATABASE_URL", "JOBS_BACKEND")
        if key in os.environ
    }
)

"""The book club served by Hypercorn: ``hypercorn tests.bookclub.served:app``.

Configured by ``CLUB_DATABASE_URL``, ``CLUB_AUDIT_DATABASE_URL`` and ``CLUB_JOBS_BACKEND``,
which become the app's ``DATABASE_URL``, ... : the app's configuration, not the environment's
``DATABASE_URL``, is what its units of work use.
"""

from __future__ import annotations

import os

from tests.bookclub.app import create_app

app = create_app(
    {
        key: os.environ[f"CLUB_{key}"]
        for key in ("DATABASE_URL", "AUDIT_DATABASE_URL", "JOBS_BACKEND")
        if f"CLUB_{key}" in os.environ
    }
)

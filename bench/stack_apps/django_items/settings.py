import os
from urllib.parse import urlsplit

from bench.stack_apps import BUSY_TIMEOUT_MS

SECRET_KEY = "bench"  # noqa: S105 - a benchmark's throwaway server
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["bench.stack_apps.django_items"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.stack_apps.django_items.views"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True


def _database(url: str) -> dict[str, object]:
    """Django's settings for the SQLAlchemy URL the driver gives every stack."""
    parts = urlsplit(url)
    common = {"ATOMIC_REQUESTS": True, "CONN_MAX_AGE": None}
    if parts.scheme.startswith("sqlite"):
        return {
            **common,
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": parts.path.removeprefix("/"),
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": BUSY_TIMEOUT_MS / 1000,
                "init_command": "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
            },
        }
    return {
        **common,
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.removeprefix("/"),
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
    }


DATABASES = {"default": _database(os.environ["DATABASE_URL"])}

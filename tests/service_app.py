"""The service's own app for the suite's service-level tests, with the layer's test routes too
(``tests.db.app``): for tests of what the service adds around the layer (jobs, metrics,
security headers). The layer's own tests serve ``tests.db.app.make_layer_app`` instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart

from service.app import create_app
from tests.db.app import routes


def make_service_test_app(config: Mapping[str, Any]) -> Quart:
    # Jobs run eagerly, as in the plugin's app, unless a test asks for a real dispatcher:
    # one would sweep the suite's database while a test's transaction holds it.
    app = create_app({"JOBS_BACKEND": "eager", **config})
    app.register_blueprint(routes)
    return app

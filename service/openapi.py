"""The OpenAPI document and the docs page, which works offline.

The document is quart-schema's, made into one a person (and a client generator)
can use: every body schema is defined once in ``components`` and referenced (so
a generated client has one error model, and parses every error answer into it);
an operation's id is its view's name, a verb (``create_deposit``, not
``post_create_deposit``); operations are grouped by tag, in the order of
``TAGS``; descriptions are Markdown (docstrings' reST ````code```` becomes
``code``); an answer may have no body (``NoContent``, for a 204); every error
status is described. The docs page is Swagger UI 5 (which reads OpenAPI 3.1)
from the ``swagger-ui-py`` package, its files served by the app itself: no CDN,
so it works without a network and loads nothing from elsewhere.
"""

from __future__ import annotations

from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import Any

from quart import Quart, Response, abort, send_from_directory
from quart_schema import OpenAPIProvider, hide
from quart_schema.openapi import QUART_SCHEMA_OPERATION_ID_ATTRIBUTE
from quart_schema.validation import DataSource

__all__ = ["TAGS", "NoContent", "Provider", "init_docs"]

TAGS = [
    {"name": "Users", "description": "Registering, and the user a token belongs to."},
    {"name": "Tokens", "description": "API tokens: one per machine or script, each revocable."},
    {"name": "Accounts", "description": "A user's accounts, each in one currency."},
    {
        "name": "Movements",
        "description": "Deposits, withdrawals and transfers, and the entries they leave.",
    },
    {"name": "Statements", "description": "Statements of a period, computed by a job."},
    {"name": "Health", "description": "Probes for load balancers and orchestrators."},
]
"""The document's groups of operations, in the order the docs page shows them."""
_SCHEMAS = "#/components/schemas/"

_ASSETS = Path(str(files("swagger_ui") / "static"))
_SERVED = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}
)
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
});
"""


class NoContent:
    """An answer with no body (``document_response(NoContent, 204)``)."""


class Provider(OpenAPIProvider):
    """quart-schema's document, with shared schemas referenced, verbs for operation ids,
    tags, Markdown descriptions, bodiless answers and error statuses described."""

    _shared: dict[str, Any]

    def schema(self) -> dict[str, Any]:
        self._shared = {}
        document = super().schema()
        for operations in document["paths"].values():
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["requestBody"]["required"] = True  # no body is a 400, not a default
                if not operation.get("description", "").strip():
                    operation.pop("description", None)  # a one-line docstring: the summary alone
                for status, response in operation["responses"].items():
                    if int(status) >= 400 or not response.get("description"):
                        response["description"] = HTTPStatus(int(status)).phrase
        used = {
            name
            for operations in document["paths"].values()
            for operation in operations.values()
            for name in operation.get("tags", ())
        }
        document["tags"] = [tag for tag in TAGS if tag["name"] in used]
        _markdown(document)
        return document

    def operation_id(self, method: str, path: str, func: Any) -> str | None:
        operation: str = getattr(func, QUART_SCHEMA_OPERATION_ID_ATTRIBUTE, func.__name__)
        return operation

    def build_request_body(
        self, model: Any, source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, definitions = super().build_request_body(model, source)
        for media in body["content"].values():
            media["schema"] = self._shared_schema(media["schema"], definitions)
        return body, definitions

    def build_response_object(
        self, model: Any, headers_model: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is NoContent:
            return {"description": "No content"}, {}
        response, definitions = super().build_response_object(model, headers_model)
        media = response["content"]["application/json"]
        media["schema"] = self._shared_schema(media["schema"], definitions)
        return response, definitions

    def _shared_schema(self, schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
        """The body's schema moved into ``components`` under its title, and a reference to it."""
        name = schema.get("title")
        if name is None or schema.get("type") != "object":
            return schema
        known = self._shared.setdefault(name, schema)
        if known != schema:  # the same name for two shapes would merge them in a client
            raise ValueError(f"two different schemas are both called {name!r}")
        definitions[name] = schema
        return {"$ref": _SCHEMAS + name}


def _markdown(node: Any) -> None:
    """Descriptions and summaries in Markdown: reST's ````code```` is Markdown's ``code``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "summary") and isinstance(value, str):
                node[key] = value.replace("``", "`").strip()
            else:
                _markdown(value)
    elif isinstance(node, list):
        for item in node:
            _markdown(item)


def init_docs(app: Quart, title: str) -> None:
    """``/docs``: Swagger UI on ``/openapi.json``, its assets served from the package."""
    page = _PAGE.format(title=title)

    @app.get("/docs")
    @hide
    async def docs() -> Response:
        return Response(page, content_type="text/html; charset=utf-8")

    @app.get("/docs/init.js")
    @hide
    async def docs_init() -> Response:
        return Response(_INIT, content_type="text/javascript; charset=utf-8")

    @app.get("/docs/assets/<name>")
    @hide
    async def docs_asset(name: str) -> Response:
        if name not in _SERVED:
            abort(404)
        response = await send_from_directory(_ASSETS, name)
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

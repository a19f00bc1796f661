"""The OpenAPI document and the docs page, which works offline.

The document is quart-schema's, with two additions: an answer without a body
(``NoContent``, for a 204) and a description of each error status. The docs
page is Swagger UI 5 (which reads OpenAPI 3.1) from the ``swagger-ui-py``
package, its files served by the app itself: no CDN, so it works without a
network and loads nothing from elsewhere.
"""

from __future__ import annotations

from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import Any

from quart import Quart, Response, abort, send_from_directory
from quart_schema import OpenAPIProvider, hide

__all__ = ["NoContent", "Provider", "init_docs"]

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
    """quart-schema's document, with bodiless answers, required bodies and error statuses
    described."""

    def build_response_object(
        self, model: Any, headers_model: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if model is NoContent:
            return {"description": "No content"}, {}
        return super().build_response_object(model, headers_model)

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        for operations in document["paths"].values():
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["requestBody"]["required"] = True  # no body is a 400, not a default
                for status, response in operation["responses"].items():
                    if int(status) >= 400 or not response.get("description"):
                        response["description"] = HTTPStatus(int(status)).phrase
        return document


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

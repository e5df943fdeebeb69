"""The API page: Swagger UI at ``/docs`` over ``/openapi.json``, served from the process.

Pods often have no internet, so the page's scripts and styles come from the
``swagger-ui-bundle`` package on disk, never from a CDN. The page, its assets and the
document are open (no token) when auth is on; the page's "Authorize" button takes the
token for the calls it makes. ``--docs false`` removes all three routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson

from predictor.edge import openapi
from predictor.edge.routes import Answer, HttpRequest, Route
from predictor.errors import NoRoute

#: The files of Swagger UI the page loads (nothing else of the package is served).
ASSETS = {
    "swagger-ui.css": b"text/css",
    "swagger-ui-bundle.js": b"text/javascript",
    "favicon-32x32.png": b"image/png",
    "favicon-16x16.png": b"image/png",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>gpu-predictor API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      tryItOutEnabled: false,
      validatorUrl: null
    });
  </script>
</body>
</html>
"""


def _assets_dir() -> Path:
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


class DocsPage:
    """The three routes' handlers.

    Args:
        routes: every other route served (the document describes them and these).
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = list(routes)
        self._document: bytes | None = None
        self._assets = _assets_dir()

    def own_routes(self) -> list[Route]:
        """``/openapi.json``, ``/docs`` and its assets."""
        return [
            Route("GET", "/openapi.json", self.document, open=True, summary="OpenAPI document"),
            Route("GET", "/docs", self.page, open=True, summary="API page (Swagger UI)"),
            Route("GET", "/docs/{asset}", self.asset, open=True, summary="API page assets"),
        ]

    async def document(self, request: HttpRequest) -> Answer:
        """The OpenAPI document (built once, on first use)."""
        if self._document is None:
            full = openapi.document([*self._routes, *self.own_routes()])
            self._document = orjson.dumps(full)
        return Answer(200, [(b"content-type", b"application/json")], self._document)

    async def page(self, request: HttpRequest) -> Answer:
        """The Swagger UI page."""
        return Answer(200, [(b"content-type", b"text/html; charset=utf-8")], _PAGE.encode())

    async def asset(self, request: HttpRequest) -> Answer:
        """One of Swagger UI's files, from the installed package."""
        name = request.params["asset"]
        if name not in ASSETS:
            raise NoRoute(f"no asset {name[:60]!r} on the docs page")
        data = (self._assets / name).read_bytes()
        headers = [(b"content-type", ASSETS[name]), (b"cache-control", b"max-age=86400")]
        return Answer(200, headers, data)


def routes(served: Sequence[Route]) -> list[Route]:
    """The docs routes for a server whose other routes are ``served``."""
    return DocsPage(served).own_routes()

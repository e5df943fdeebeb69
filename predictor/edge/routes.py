"""The HTTP route table: path templates to handlers, with HEAD, 404 and 405 done once.

A route is a method, a path template (``/v2/models/{model}/infer``), a handler, and who may
call it: ``open`` routes (probes, metrics, the docs page) need no token when auth is on;
``infer`` routes are the inference routes the edge accounts for and drains. ``HEAD`` is
answered for every ``GET`` route; a known path with another method is a 405 naming the
methods it takes; anything else is a 404. Both in the ``{"error": ...}`` shape.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from predictor.errors import MethodNotAllowed, NoRoute

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, headers and body."""

    status: int
    headers: Headers
    body: bytes


@dataclass
class HttpRequest:
    """One HTTP request as handlers see it.

    Attributes:
        method: ``GET``, ``POST``...; ``HEAD`` requests reach ``GET`` handlers as ``GET``.
        path: the URL path.
        params: values of the template's ``{placeholders}``.
        headers: request headers, lower-case names (the last of repeated headers).
        body: the whole body (empty for ``GET``).
        query: the raw query string.
    """

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""


Handler = Callable[[HttpRequest], Awaitable[Answer]]


@dataclass(frozen=True)
class Route:
    """One route.

    Attributes:
        method: the HTTP method.
        template: the path, ``{name}`` matching one segment (no ``/``, and no ``:``).
        handler: answers the request.
        open: served without a bearer token when auth is on.
        infer: an inference route (accounted in the request metrics, refused while draining).
        summary: one line for the OpenAPI document.
    """

    method: str
    template: str
    handler: Handler
    open: bool = False
    infer: bool = False
    summary: str = ""
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        regex = "".join(
            f"(?P<{piece[1:-1]}>[^/:]+)" if piece.startswith("{") else re.escape(piece)
            for piece in re.split(r"(\{[a-z_]+\})", self.template)
        )
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))


class Router:
    """Matches requests to routes.

    Args:
        routes: the routes served, in order of precedence.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and ``path``, and the values of its placeholders.

        Raises:
            NoRoute: no route has this path (404).
            MethodNotAllowed: routes have this path, not this method (405).
        """
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == wanted:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            raise MethodNotAllowed(
                f"{method} is not allowed on {_shown(path)}; use {', '.join(allowed)}",
                tuple(allowed),
            )
        raise NoRoute(f"no route {_shown(method)} {_shown(path)}; see /docs for the routes")


def _shown(text: str) -> str:
    """A client-supplied path or method as it may appear in a message."""
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable[:100] + ("..." if len(printable) > 100 else "")

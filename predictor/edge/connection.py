"""HTTP connections with limits a hostile or broken client cannot outwait.

uvicorn's protocol (httptools) holds a connection for as long as the client keeps it: a
request line sent byte by byte, headers that never end, a ``Content-Length`` of 100,000
followed by 100 bytes, and headers of any size and number. :class:`GuardedProtocol` adds:

* a header timeout: the request line and headers must arrive within ``header_timeout_s``
  of the connection opening (or of the first byte of a later request on it);
* a body timeout: no more than ``body_timeout_s`` without a byte of a body still due;
* caps on header bytes (request line included) and header count: ``431``;
* a cap on open connections per process: the next one is answered ``503`` and closed.

A timed-out request is answered ``408`` (when it had started) and closed; every answer
is in the server's ``{"error": ...}`` shape. The keep-alive idle timeout stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    """What one HTTP connection may take (see the module's description)."""

    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_connections: int


def protocol_class(
    limits: ConnectionLimits, refused: Callable[[str], None] | None = None
) -> type[GuardedProtocol]:
    """A uvicorn ``http`` protocol class enforcing ``limits``; ``refused(reason)`` counts."""
    attributes = {"limits": limits, "refused": staticmethod(refused or (lambda reason: None))}
    return type("GuardedHttpProtocol", (GuardedProtocol,), attributes)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`."""

    limits: ConnectionLimits
    refused: Callable[[str], None]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse a connection over the cap; else wait for a request's headers."""
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._header_bytes = 0
        self._header_count = 0
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many open connections; retry shortly", "connections", True)
            return
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the timer with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; bytes that leave it still inside headers count against the cap.

        (httptools only hands over a header once it is complete, so a header bomb is
        stopped here, while it arrives.)
        """
        if self.transport.is_closing():
            return
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            self._check_header_bytes()

    def on_message_begin(self) -> None:
        """A request starts: its headers are due within the header timeout."""
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = self._header_count = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout_s, "headers")

    def on_url(self, url: bytes) -> None:
        """Count the request target against the header bytes."""
        if self.transport.is_closing():
            return
        self._header_bytes += len(url)
        self._check_header_bytes()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count the headers and their bytes."""
        if self.transport.is_closing():
            return
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            self._refuse(
                431, f"more than {self.limits.max_headers} request headers", "header_count"
            )
            return
        self._check_header_bytes()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Headers are in: a body, if any, must keep coming."""
        self._in_headers = False
        self._disarm()
        if self.transport.is_closing():
            return
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        """More body: the body timer starts over."""
        if self.transport.is_closing():
            return
        self._arm(self.limits.body_timeout_s, "body")
        super().on_body(body)

    def on_message_complete(self) -> None:
        """The whole request is in."""
        self._disarm()
        if self.transport.is_closing():
            return
        super().on_message_complete()

    # -- internals ---------------------------------------------------------------------------

    def _check_header_bytes(self) -> None:
        if self._header_bytes > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            self._refuse(431, f"request headers exceed {limit} bytes", "header_bytes")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _expired(self, what: str) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if what == "headers" and not self._in_headers:
            self.refused("header_timeout")
            self.transport.close()  # nothing of a request arrived: just close
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        seconds = self.limits.header_timeout_s if what == "headers" else self.limits.body_timeout_s
        message = f"request {what} not received within {seconds:g} s"
        self._refuse(408, message, f"{what}_timeout")

    def _refuse(self, status: int, message: str, reason: str, retry_after: bool = False) -> None:
        """Answer ``status`` directly on the connection and close it."""
        self._disarm()
        if self.transport.is_closing():
            return
        self.refused(reason)
        if self.cycle is not None:  # the application must not answer too
            self.cycle.response_complete = True
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        body = orjson.dumps({"error": message})
        head = [
            b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        if retry_after:
            head.append(b"retry-after: 1")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
        log.debug("HTTP %d to %s: %s", status, _peer(self.client), message)


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"

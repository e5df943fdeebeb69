"""The HTTP edge: an ASGI layer around KServe's FastAPI app, and its error translation.

For inference routes (``/v1/models/<m>:predict``, ``/v2/models/<m>/infer``) it refuses work
while draining (503 + Retry-After), refuses bodies over ``--max-body-bytes`` from their
``Content-Length`` before reading them (413), checks the bearer token when auth is on
(401; probes and ``/metrics`` stay open), cancels the request when the client disconnects,
and counts every answer in ``predictor_requests_total`` / ``predictor_rejected_total``.
Error classes become JSON ``{"error": "<one line>"}`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from starlette.responses import JSONResponse, Response

from predictor.errors import (
    BadInput,
    Draining,
    PredictorError,
    TooLarge,
    Unauthorized,
    UnknownModel,
)
from predictor.state import ServingState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_V1_INFER = re.compile(r"^/v1/models/([^/:]+):predict$")
_V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_OPEN = re.compile(
    r"^(/|/metrics|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready|/v1/models/[^/:]+)$"
)
REASON_KEY = "predictor_reject_reason"
CLIENT_CLOSED = 499  # nginx's code for "client closed request", used in metrics only


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass(frozen=True)
class _Route:
    protocol: str
    model: str


def _infer_route(path: str) -> _Route | None:
    match = _V1_INFER.match(path)
    if match:
        return _Route("v1", match.group(1))
    match = _V2_INFER.match(path)
    if match:
        return _Route("v2", match.group(1))
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class HttpEdge:
    """ASGI middleware enforcing limits, auth, drain and request accounting.

    Args:
        app: KServe's FastAPI application.
        state: the shared serving state.
        max_body_bytes: larger bodies are refused with 413.
    """

    def __init__(self, app: ASGIApp, state: ServingState, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _infer_route(scope["path"])
        if route is None:
            if not _OPEN.match(scope["path"]) and not self.state.authorized(
                _header(scope, b"authorization")
            ):
                await _reply(send, Unauthorized("missing or invalid bearer token"))
                return
            await self.app(scope, receive, send)
            return
        await self._infer(route, scope, receive, send)

    async def _infer(self, route: _Route, scope: Scope, receive: Receive, send: Send) -> None:
        model = self.state.model_label(route.model)
        started = time.perf_counter()
        status: list[int] = [500]
        reason: str | None = None
        self.state.enter(model)
        try:
            reason = await self._guarded(route, scope, receive, send, status)
        finally:
            self.state.leave(model)
            metrics = self.state.metrics
            metrics.observe_request(model, route.protocol, status[0], time.perf_counter() - started)
            if reason is not None:
                metrics.observe_rejection(model, reason)

    async def _guarded(
        self, route: _Route, scope: Scope, receive: Receive, send: Send, status: list[int]
    ) -> str | None:
        try:
            if not self.state.authorized(_header(scope, b"authorization")):
                raise Unauthorized("missing or invalid bearer token")
            if self.state.draining:
                raise Draining("server is shutting down; retry on another replica")
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                raise TooLarge(
                    f"body of {int(length)} bytes exceeds the limit of {self.max_body_bytes}"
                )
            body = await self._read_body(receive)
        except _ClientGone:
            status[0] = CLIENT_CLOSED
            return "cancelled"
        except PredictorError as exc:
            status[0] = exc.status
            await _reply(send, exc)
            return exc.reason
        if route.protocol == "v1" and _header(scope, b"content-type") == "application/octet-stream":
            scope["headers"] = [
                (k, b"application/x-image" if k == b"content-type" else v)
                for k, v in scope["headers"]
            ]
        scope.setdefault("state", {})
        return await self._run_app(scope, body, receive, send, status)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise TooLarge(f"body exceeds the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run_app(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, status: list[int]
    ) -> str | None:
        disconnected = asyncio.Event()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        app_task = asyncio.ensure_future(self.app(scope, replay, send_and_record))
        watcher = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({app_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            app_task.cancel()
            watcher.cancel()
            raise
        if not app_task.done():
            # The client went away: cancel its work; its queued images are skipped.
            disconnected.set()
            app_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await app_task
            status[0] = CLIENT_CLOSED
            return "cancelled"
        watcher.cancel()
        # Starlette re-raises after its 500 handler answered; the handler logged it.
        with contextlib.suppress(Exception):
            app_task.result()
        reason = scope["state"].get(REASON_KEY)
        return reason if isinstance(reason, str) else None


async def _reply(send: Send, error: PredictorError) -> None:
    body = orjson.dumps({"error": error.message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- error translation: exception handlers on the FastAPI app ---------------------------------


def error_response(request: Request, error: PredictorError) -> Response:
    """The JSON answer for an error; remembers its reason for the edge's metrics."""
    request.state.__setattr__(REASON_KEY, error.reason)
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to its status with a one-line body; never a traceback."""

    async def predictor_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PredictorError)
        if exc.status >= 500 and not isinstance(exc, (Draining,)):
            log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(request, exc)

    async def invalid_input(request: Request, exc: Exception) -> Response:
        return error_response(request, BadInput(_one_line(str(exc))))

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        detail = first.get("msg", "invalid request body")
        return error_response(request, BadInput(_one_line(f"malformed request: {where} {detail}")))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(request, UnknownModel(_one_line(str(exc))))

    async def not_ready(request: Request, exc: Exception) -> Response:
        from predictor.errors import NotReady

        return error_response(request, NotReady(_one_line(str(exc))))

    async def internal(request: Request, exc: Exception) -> Response:
        request_id = request.headers.get("x-request-id", "-")
        log.error(
            "unhandled error on %s (request id %s)", request.url.path, request_id, exc_info=exc
        )
        request.state.__setattr__(REASON_KEY, "internal")
        return JSONResponse(
            {"error": f"internal server error; request id {request_id}"}, status_code=500
        )

    app.add_exception_handler(PredictorError, predictor_error)
    app.add_exception_handler(InvalidInput, invalid_input)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(ModelNotFound, not_found)
    app.add_exception_handler(ModelNotReady, not_ready)
    app.add_exception_handler(Exception, internal)


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "invalid request"
    return line[:300]

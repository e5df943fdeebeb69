"""The HTTP edge: an ASGI layer in front of KServe's FastAPI app.

For the inference routes (``/v1/models/<m>:predict``, ``/v2/models/<m>/infer``) it refuses
work while draining (503 + Retry-After), refuses bodies over ``--max-body-bytes`` from their
``Content-Length`` before reading them (413), checks the bearer token when auth is on (401),
answers through KServe's data plane (:mod:`predictor.http_infer`), cancels the request when
the client disconnects, and counts every answer in ``predictor_requests_total`` and
``predictor_rejected_total``. Other routes go to FastAPI behind the same token check
(probes and ``/metrics`` stay open). Errors become JSON ``{"error": "<one line>"}`` here and
in the FastAPI exception handlers below, nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from kserve.protocol.dataplane import DataPlane
from starlette.responses import JSONResponse, Response

from predictor import http_infer
from predictor.errors import (
    BadInput,
    Draining,
    PredictorError,
    TooLarge,
    Unauthorized,
    one_line,
    translate,
)
from predictor.state import ServingState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[DataPlane, str, bytes, dict[str, str]], Coroutine[Any, Any, http_infer.Answer]]

_V1_INFER = re.compile(r"^/v1/models/([^/:]+):predict$")
_V2_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_OPEN = re.compile(
    r"^(/|/metrics|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready"
    r"|/v1/models/[^/:]+)$"
)
CLIENT_CLOSED = 499  # nginx's code for "client closed request", used in metrics only


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def error_answer(error: PredictorError) -> http_infer.Answer:
    """The JSON answer for an error, with ``Retry-After`` / ``WWW-Authenticate`` as due."""
    headers = [(b"content-type", b"application/json")]
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return http_infer.Answer(error.status, headers, orjson.dumps({"error": error.message}))


async def _send(send: Send, answer: http_infer.Answer) -> None:
    headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


class HttpEdge:
    """ASGI middleware enforcing limits, auth and drain, and serving the inference routes.

    Args:
        app: KServe's FastAPI application (every route but inference).
        state: the shared serving state.
        dataplane: KServe's data plane, which the inference routes call.
        max_body_bytes: larger bodies are refused with 413.
    """

    def __init__(
        self, app: ASGIApp, state: ServingState, dataplane: DataPlane, max_body_bytes: int
    ) -> None:
        self.app = app
        self.state = state
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] == "POST":
            match = _V1_INFER.match(path)
            if match:
                await self._infer("v1", match.group(1), http_infer.v1_predict, scope, receive, send)
                return
            match = _V2_INFER.match(path)
            if match:
                await self._infer("v2", match.group(1), http_infer.v2_infer, scope, receive, send)
                return
        if not _OPEN.match(path) and not self.state.authorized(_header(scope, b"authorization")):
            await _send(send, error_answer(Unauthorized("missing or invalid bearer token")))
            return
        await self.app(scope, receive, send)

    async def _infer(
        self,
        protocol: str,
        model_name: str,
        handler: Handler,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        model = self.state.model_label(model_name)
        started = time.perf_counter()
        status, reason = 500, "internal"
        self.state.enter(model)
        try:
            answer, reason = await self._answer(model_name, handler, scope, receive, protocol)
            status = answer.status
            await _send(send, answer)
        except _ClientGone:
            status, reason = CLIENT_CLOSED, "cancelled"
        finally:
            self.state.leave(model)
            metrics = self.state.metrics
            metrics.observe_request(model, protocol, status, time.perf_counter() - started)
            if reason:
                metrics.observe_rejection(model, reason)

    async def _answer(
        self, model_name: str, handler: Handler, scope: Scope, receive: Receive, protocol: str
    ) -> tuple[http_infer.Answer, str]:
        """The answer and, for a failure, its metric reason ("" on success)."""
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
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if protocol == "v1" and headers.get("content-type") == "application/octet-stream":
                headers["content-type"] = "application/x-image"  # a raw image, not JSON
            work = handler(self.dataplane, model_name, body, headers)
            return await _cancel_on_disconnect(work, receive), ""
        except _ClientGone:
            raise
        except Exception as exc:
            error = translate(exc)
            if error is not None:
                return error_answer(error), error.reason
            request_id = _header(scope, b"x-request-id") or "-"
            log.error(
                "unhandled error on %s (request id %s)", scope["path"], request_id, exc_info=exc
            )
            body = orjson.dumps({"error": f"internal server error; request id {request_id}"})
            return http_infer.Answer(
                500, [(b"content-type", b"application/json")], body
            ), "internal"

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
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _cancel_on_disconnect(
    work: Coroutine[Any, Any, http_infer.Answer], receive: Receive
) -> http_infer.Answer:
    """Run ``work`` in this task; cancel it if the client disconnects meanwhile.

    After the body, the next ASGI message can only be ``http.disconnect``; a watcher task
    waits for it and cancels this task, so the request's queued images are skipped.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        if (await receive())["type"] == "http.disconnect":
            gone = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise _ClientGone from None
        raise
    finally:
        watcher.cancel()


# -- FastAPI exception handlers (every route but inference) ------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to its status with a one-line body; never a traceback."""

    def respond(error: PredictorError) -> Response:
        headers = {} if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
        return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)

    async def known(request: Request, exc: Exception) -> Response:
        error = translate(exc)
        assert error is not None
        if error.status >= 500 and not isinstance(error, Draining):
            log.warning("%s %s: %s", request.method, request.url.path, error.message)
        return respond(error)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        detail = first.get("msg", "invalid request body")
        return respond(BadInput(one_line(f"malformed request: {where} {detail}")))

    async def internal(request: Request, exc: Exception) -> Response:
        request_id = request.headers.get("x-request-id", "-")
        log.error(
            "unhandled error on %s (request id %s)", request.url.path, request_id, exc_info=exc
        )
        body = {"error": f"internal server error; request id {request_id}"}
        return JSONResponse(body, status_code=500)

    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

    for kind in (PredictorError, InvalidInput, ModelNotFound, ModelNotReady):
        app.add_exception_handler(kind, known)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(Exception, internal)

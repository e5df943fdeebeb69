"""The HTTP edge: the ASGI application uvicorn runs.

It matches the route (:mod:`predictor.edge.routes`), checks the bearer token when auth is
on (401; probes, metrics and the docs page stay open), refuses bodies over
``--max-body-bytes`` from their ``Content-Length`` before reading them (413), and answers
every error in one shape, ``{"error": "<one line>"}``, built here and nowhere else.

Inference routes are refused while draining (503 + Retry-After), cancelled when the client
disconnects, and counted in ``predictor_requests_total`` and ``predictor_rejected_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from predictor.edge.accounting import Account
from predictor.edge.routes import Answer, HttpRequest, Route, Router
from predictor.errors import (
    BadInput,
    Draining,
    MethodNotAllowed,
    PredictorError,
    TooLarge,
    Unauthorized,
    translate,
)
from predictor.runtime.budget import Held, MemoryBudget
from predictor.serving.state import ServingState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_answer(error: PredictorError) -> Answer:
    """The JSON answer for an error, with ``Retry-After`` / ``WWW-Authenticate`` / ``Allow``."""
    headers = [_JSON]
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if isinstance(error, MethodNotAllowed):
        headers.append((b"allow", ", ".join(error.allow).encode()))
    return Answer(error.status, headers, orjson.dumps({"error": error.message}))


def internal_error(scope: Scope, headers: dict[str, str], exc: BaseException) -> Answer:
    """A generic 500; the traceback goes to the log, never to the client."""
    request_id = headers.get("x-request-id", "-")[:100]
    log.error("unhandled error on %s (request id %s)", scope["path"], request_id, exc_info=exc)
    body = orjson.dumps({"error": f"internal server error; request id {request_id}"})
    return Answer(500, [_JSON], body)


async def _send(send: Send, answer: Answer, head: bool = False) -> None:
    headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


class HttpEdge:
    """ASGI application: routes, auth, limits, drain and accounting.

    Args:
        router: the routes served.
        state: the shared serving state.
        max_body_bytes: larger bodies are refused with 413.
        budget: the memory budget inference bodies are held against while in flight.
    """

    def __init__(
        self,
        router: Router,
        state: ServingState,
        max_body_bytes: int,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.router = router
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        try:
            route, params = self.router.match(scope["method"], scope["path"])
        except PredictorError as error:
            await _send(send, error_answer(error), scope["method"] == "HEAD")
            return
        if route.infer:
            await self._infer(route, params, scope, receive, send)
            return
        headers = _headers(scope)
        try:
            answer = await self._answer(route, params, scope, headers, receive)
        except _ClientGone:
            return
        await _send(send, answer, scope["method"] == "HEAD")

    async def _answer(
        self,
        route: Route,
        params: dict[str, str],
        scope: Scope,
        headers: dict[str, str],
        receive: Receive,
    ) -> Answer:
        try:
            _check_credentials(scope)
            if not route.open and not self.state.authorized(headers.get("authorization")):
                raise Unauthorized("missing or invalid bearer token")
            body = b""
            if route.method != "GET":
                self._check_length(headers)
                body = await self._read_body(receive)
            request = HttpRequest(route.method, scope["path"], params, headers, body, _query(scope))
            return await route.handler(request)
        except _ClientGone:
            raise
        except Exception as exc:
            error = translate(exc)
            return error_answer(error) if error is not None else internal_error(scope, headers, exc)

    async def _infer(
        self, route: Route, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        protocol = "v1" if scope["path"].startswith("/v1/") else "v2"
        with Account(self.state, params.get("model"), protocol) as account:
            try:
                answer, error = await self._infer_answer(route, params, scope, receive)
                account.answered(answer.status, error)
                await _send(send, answer)
            except _ClientGone:
                account.cancelled()

    async def _infer_answer(
        self, route: Route, params: dict[str, str], scope: Scope, receive: Receive
    ) -> tuple[Answer, PredictorError | None]:
        """The answer and, for a failure, the error it reports."""
        headers = _headers(scope)
        held = Held(self.budget, "this request body")
        try:
            _check_credentials(scope)
            if not self.state.authorized(headers.get("authorization")):
                raise Unauthorized("missing or invalid bearer token")
            model = self.state.models.get(params.get("model", ""))
            if self.state.closing or (model is not None and model.closed):
                raise Draining("server is shutting down; retry on another replica")
            length = self._check_length(headers)
            if length:
                held.take(length)
            body = await self._read_body(receive, held if not length else None)
            request = HttpRequest(route.method, scope["path"], params, headers, body, _query(scope))
            return await _cancel_on_disconnect(route.handler(request), receive), None
        except _ClientGone:
            raise
        except Exception as exc:
            error = translate(exc)
            if error is not None:
                return error_answer(error), error
            return internal_error(scope, headers, exc), PredictorError("internal")
        finally:
            held.give_back()

    def _check_length(self, headers: dict[str, str]) -> int:
        """The declared body length (0 when none), refused over the limit."""
        text = headers.get("content-length", "")
        length = int(text) if text.isdigit() and len(text) < 19 else 0
        if length > self.max_body_bytes or (text.isdigit() and len(text) >= 19):
            raise TooLarge(f"body of {text[:20]} bytes exceeds the limit of {self.max_body_bytes}")
        return length

    async def _read_body(self, receive: Receive, held: Held | None = None) -> bytes:
        """The whole body; chunks of a body of unknown length are held as they arrive."""
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
            if held is not None and chunk:
                held.take(len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _check_credentials(scope: Scope) -> None:
    """Two ``Authorization`` headers in one request are refused (400), not guessed at."""
    if sum(1 for key, _ in scope["headers"] if key == b"authorization") > 1:
        raise BadInput("the request holds more than one Authorization header")


def _headers(scope: Scope) -> dict[str, str]:
    return {bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in scope["headers"]}


def _query(scope: Scope) -> str:
    return bytes(scope.get("query_string", b"")).decode("latin-1")


async def _cancel_on_disconnect(work: Awaitable[Answer], receive: Receive) -> Answer:
    """Run ``work`` in this task; cancel it if the client disconnects meanwhile.

    After the body, the next ASGI message can only be ``http.disconnect``; a watcher task
    waits for it and cancels this task, so the request's queued images are skipped.
    """
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always called from a task
        return await work
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

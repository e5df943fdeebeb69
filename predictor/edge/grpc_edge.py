"""The gRPC edge: one interceptor for auth, drain, error translation and accounting.

gRPC answers are counted in ``predictor_requests_total`` with ``protocol="grpc"`` and the
HTTP-equivalent ``code`` (200, 400, 503, ...), so one dashboard query covers every route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc import aio
from grpc_interceptor.server import AsyncServerInterceptor

from predictor.edge.accounting import Account
from predictor.errors import BadInput, Draining, PredictorError, Unauthorized, translate
from predictor.serving.state import ServingState

log = logging.getLogger(__name__)

_SERVICE = "/inference.GRPCInferenceService/"
INFER = _SERVICE + "ModelInfer"
#: Health and readiness stay open when auth is on (probes carry no token).
OPEN_METHODS = frozenset(_SERVICE + m for m in ("ServerLive", "ServerReady", "ModelReady"))


class GrpcEdge(AsyncServerInterceptor):
    """Server interceptor wrapping every RPC of the v2 gRPC service.

    Args:
        state: the shared serving state.
    """

    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        context: aio.ServicerContext,
        method_name: str,
    ) -> Any:
        """Run one RPC under the edge's checks."""
        if method_name != INFER:
            try:
                if method_name not in OPEN_METHODS and not self._authorized(context):
                    raise Unauthorized("missing or invalid bearer token")
                _check_message(request_or_iterator)
                return await method(request_or_iterator, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await self._fail(exc, context, method_name)
        name = getattr(request_or_iterator, "model_name", None)
        with Account(self.state, name, "grpc") as account:
            try:
                if not self._authorized(context):
                    raise Unauthorized("missing or invalid bearer token")
                _check_message(request_or_iterator)
                model = self.state.models.get(name or "")
                if self.state.closing or (model is not None and model.closed):
                    raise Draining("server is shutting down; retry on another replica")
                reply = await method(request_or_iterator, context)
                account.answered(200)
                return reply
            except asyncio.CancelledError:
                account.cancelled()
                raise
            except Exception as exc:
                if _is_abort(exc):
                    raise
                error = translate(exc)
                account.answered(error.status if error else 500, error or PredictorError("-"))
                await self._fail(exc, context, method_name)

    def _authorized(self, context: aio.ServicerContext) -> bool:
        """The token check; two ``authorization`` entries are refused (INVALID_ARGUMENT)."""
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if len(values) > 1:
            raise BadInput("the request holds more than one authorization entry")
        if self.state.auth_token is None:
            return True
        return self.state.authorized(values[0] if values else None)

    async def _fail(
        self, exc: Exception, context: aio.ServicerContext, method_name: str
    ) -> NoReturn:
        error = translate(exc)
        if error is None:
            log.error("unhandled error in %s", method_name, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
            raise AssertionError("abort returned")
        await _abort(context, error)


async def _abort(context: aio.ServicerContext, error: PredictorError) -> NoReturn:
    if error.retry_after_s is not None:
        context.set_trailing_metadata((("retry-after", str(error.retry_after_s)),))
    await context.abort(error.grpc_code, error.message)
    raise AssertionError("abort returned")


class Malformed:
    """What a request that is not a valid protobuf message decodes to (see :func:`lenient`)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def lenient(parse: Callable[[bytes], Any], kind: str) -> Callable[[bytes], Any]:
    """A request deserializer that hands over :class:`Malformed` instead of raising.

    gRPC answers a deserializer's exception with ``INTERNAL`` and a logged traceback; this
    way the edge answers ``INVALID_ARGUMENT`` and counts it as bad input.
    """

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # protobuf's DecodeError and friends: a malformed message
            return Malformed(kind)

    return parse_or_mark


def _check_message(request: Any) -> None:
    if isinstance(request, Malformed):
        raise BadInput(f"the request is not a valid {request.kind} message")


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises grpc's internal AbortError; let it through untouched.
    return type(exc).__name__ == "AbortError"

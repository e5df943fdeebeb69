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
from predictor.errors import Draining, PredictorError, Unauthorized, translate
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
            if method_name not in OPEN_METHODS and not self._authorized(context):
                await _abort(context, Unauthorized("missing or invalid bearer token"))
            try:
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
        if self.state.auth_token is None:
            return True
        metadata = dict(context.invocation_metadata() or ())
        return self.state.authorized(metadata.get("authorization"))

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


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises grpc's internal AbortError; let it through untouched.
    return type(exc).__name__ == "AbortError"

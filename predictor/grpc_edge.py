"""The gRPC edge: one interceptor for auth, drain, error translation and accounting.

gRPC answers are counted in ``predictor_requests_total`` with ``protocol="grpc"`` and the
HTTP-equivalent ``code`` (200, 400, 503, ...), so one dashboard query covers every route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from grpc import aio
from grpc_interceptor.server import AsyncServerInterceptor

from predictor.errors import Cancelled, Draining, PredictorError, Unauthorized, translate
from predictor.state import ServingState

log = logging.getLogger(__name__)

_SERVICE = "/inference.GRPCInferenceService/"
INFER = _SERVICE + "ModelInfer"
#: Health and readiness stay open when auth is on (probes carry no token).
OPEN_METHODS = frozenset(_SERVICE + m for m in ("ServerLive", "ServerReady", "ModelReady"))


class GrpcEdge(AsyncServerInterceptor):
    """Server interceptor wrapping every RPC of KServe's inference servicer.

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
        model = self.state.model_label(getattr(request_or_iterator, "model_name", None))
        started = time.perf_counter()
        code, reason = 200, None
        self.state.enter(model)
        try:
            if not self._authorized(context):
                raise Unauthorized("missing or invalid bearer token")
            if self.state.draining:
                raise Draining("server is shutting down; retry on another replica")
            return await method(request_or_iterator, context)
        except asyncio.CancelledError:
            code, reason = Cancelled.status, Cancelled.reason
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            error = translate(exc)
            code, reason = (error.status, error.reason) if error else (500, "internal")
            await self._fail(exc, context, method_name)
        finally:
            self.state.leave(model)
            self.state.metrics.observe_request(model, "grpc", code, time.perf_counter() - started)
            if reason is not None:
                self.state.metrics.observe_rejection(model, reason)

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

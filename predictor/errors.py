"""Error classes that carry their HTTP status, gRPC code and metric reason.

Every error a client can cause or observe is a :class:`PredictorError`. The HTTP edge
(:mod:`predictor.edge.http_edge`) and the gRPC edge (:mod:`predictor.edge.grpc_edge`) translate them
in one place each; anything else that escapes becomes a generic 500 whose body never
carries a traceback.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class PredictorError(Exception):
    """Base class: an error with a client-facing one-line message.

    Attributes:
        status: HTTP status code.
        grpc_code: the matching gRPC status code.
        reason: value of the ``reason`` label on ``predictor_rejected_total``.
        retry_after_s: when set, sent as the ``Retry-After`` header.
        message: the one-line, client-safe message.
    """

    status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "internal"
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(PredictorError):
    """400: the payload is not something the model can take (corrupt image, bad JSON...)."""

    status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "bad_input"


class Unauthorized(PredictorError):
    """401: bearer token missing or wrong."""

    status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthorized"


class UnknownModel(PredictorError):
    """404: no model of that name is served here."""

    status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    reason = "unknown_model"


class NoRoute(PredictorError):
    """404: no such route (or a route this server does not serve in its configuration)."""

    status = 404
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    reason = "bad_input"


class MethodNotAllowed(PredictorError):
    """405: the route exists, not for this method; ``allow`` lists the methods it takes."""

    status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    reason = "bad_input"

    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class TooLarge(PredictorError):
    """413: body, image or batch larger than the configured limits."""

    status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "too_large"


class Overloaded(PredictorError):
    """503: the model's queue is full; retry after a short back-off."""

    status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    reason = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(Overloaded):
    """503: the server is shutting down; retry against another replica."""

    reason = "draining"


class NotReady(Overloaded):
    """503: the model is not loaded or has been marked unhealthy."""

    reason = "not_ready"


class DeadlineExceeded(PredictorError):
    """504: the request's deadline passed before its result was ready."""

    status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "timeout"


class Cancelled(PredictorError):
    """499-style outcome for an item whose client went away (never sent to anyone)."""

    status = 499
    grpc_code = grpc.StatusCode.CANCELLED
    reason = "cancelled"


class InferenceFailed(PredictorError):
    """500: the batch this item was part of failed on the device."""

    status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    reason = "engine_error"


class LoadFailed(PredictorError):
    """500: a model's weights or device failed while loading (the message says which)."""

    status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    reason = "internal"


def one_line(text: str, limit: int = 300) -> str:
    """The first line of ``text``, at most ``limit`` characters."""
    stripped = text.strip()
    return stripped.splitlines()[0][:limit] if stripped else "invalid request"


def translate(exc: BaseException) -> PredictorError | None:
    """The project's error for an exception: KServe's own errors map to their statuses.

    Returns None for anything unexpected (the caller answers a generic 500 and logs it).
    """
    if isinstance(exc, PredictorError):
        return exc
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

    if isinstance(exc, InvalidInput):
        return BadInput(one_line(str(exc)))
    if isinstance(exc, ModelNotFound):
        return UnknownModel(one_line(str(exc)))
    if isinstance(exc, ModelNotReady):
        return NotReady(one_line(str(exc)))
    return None

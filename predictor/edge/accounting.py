"""Request accounting, the same for every transport: in-flight gauge, answers, rejections.

Every inference request, over HTTP or gRPC, is counted in ``predictor_requests_total``
with its protocol and HTTP-equivalent status code, timed in
``predictor_request_duration_seconds``, and, when it did not succeed, counted in
``predictor_rejected_total`` with its reason.
"""

from __future__ import annotations

import time
from types import TracebackType

from predictor.errors import Cancelled, PredictorError
from predictor.serving.state import ServingState


class Account:
    """The accounting of one inference request, as a context manager.

    Args:
        state: the shared serving state (metrics, in-flight counts).
        model: the model name the request gave (unknown names count as ``_unknown``).
        protocol: ``v1``, ``v2`` or ``grpc``.
    """

    def __init__(self, state: ServingState, model: str | None, protocol: str) -> None:
        self._state = state
        self.model = state.model_label(model)
        self._protocol = protocol
        self._started = time.perf_counter()
        self.status = 500
        self.reason: str | None = "internal"

    def __enter__(self) -> Account:
        self._state.enter(self.model)
        return self

    def answered(self, status: int, error: PredictorError | None = None) -> None:
        """Record the answer: its status, and for an error its reason."""
        self.status = status
        self.reason = None if error is None else error.reason

    def cancelled(self) -> None:
        """Record a request whose client went away before its answer."""
        self.answered(Cancelled.status, Cancelled("client went away"))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._state.leave(self.model)
        metrics = self._state.metrics
        seconds = time.perf_counter() - self._started
        metrics.observe_request(self.model, self._protocol, self.status, seconds)
        if self.reason is not None:
            metrics.observe_rejection(self.model, self.reason)

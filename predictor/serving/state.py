"""What the transport edges share: the served models, metrics, closing flag and auth token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from predictor.metrics import Metrics
from predictor.serving.model import ImageModel

#: The ``model`` label used for requests naming a model that is not served (bounded cardinality).
UNKNOWN_MODEL = "_unknown"


@dataclass
class ServingState:
    """Process-wide serving state, owned by :mod:`predictor.server`.

    Attributes:
        models: served models by name.
        metrics: the metric collectors.
        auth_token: bearer token required on inference routes; None when auth is off.
        closing: set on SIGTERM: readiness turns 503 and no model loads any more (each
            model's own admission switch is its batcher's ``closed``).
        inflight: inference requests in progress per model label (a gauge, read at scrape).
    """

    models: dict[str, ImageModel]
    metrics: Metrics
    auth_token: str | None = None
    closing: bool = False
    inflight: dict[str, int] = field(default_factory=dict)

    def model_label(self, name: str | None) -> str:
        """The metric label for a model name taken from a request."""
        return name if name is not None and name in self.models else UNKNOWN_MODEL

    def authorized(self, header_value: str | None) -> bool:
        """Constant-time check of an ``Authorization`` header against the token."""
        if self.auth_token is None:
            return True
        if not header_value or not header_value.startswith("Bearer "):
            return False
        # Only ASCII spaces and tabs are optional whitespace around a header value (RFC 9110);
        # a token padded with other characters (non-breaking spaces...) does not match.
        offered = header_value[len("Bearer ") :].strip(" \t").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(offered, self.auth_token.encode())

    def enter(self, model: str) -> None:
        """Count a request in flight."""
        self.inflight[model] = self.inflight.get(model, 0) + 1

    def leave(self, model: str) -> None:
        """Count a request done."""
        self.inflight[model] -= 1

    def publish(self, model: ImageModel) -> ImageModel | None:
        """Serve ``model`` under its name, with its metrics; the model it replaces, if any."""
        metrics, name, batcher = self.metrics, model.name, model.batcher
        old = self.models.get(name)
        if old is not None:
            metrics.forget_model(name)
        batcher.observer = model.observer = metrics.model_observer(name)
        metrics.describe_model(
            name,
            model.spec.arch_label,
            model.dtype_name,
            [worker.name for worker in batcher.workers],
            max_batch_size=batcher.max_batch_size,
            queue_capacity=batcher.capacity,
        )
        inflight = self.inflight
        metrics.watch_model(
            name,
            depth=lambda: float(batcher.depth),
            inflight=lambda: float(inflight.get(name, 0)),
            failures=lambda: float(batcher.consecutive_failures),
        )
        self.models[name] = model
        return old

    def withdraw(self, name: str) -> None:
        """Stop serving ``name`` and remove its gauges (counters keep their totals)."""
        del self.models[name]
        self.metrics.forget_model(name)

    def live(self) -> bool:
        """False once any model's engine keeps failing (Kubernetes should restart the pod)."""
        return not any(model.broken for model in self.models.values())

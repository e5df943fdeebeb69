"""What the transport edges share: the served models, metrics, drain flag and auth token."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field

from predictor.metrics import Metrics
from predictor.model import ImageModel

#: The ``model`` label used for requests naming a model that is not served (bounded cardinality).
UNKNOWN_MODEL = "_unknown"


@dataclass
class ServingState:
    """Process-wide serving state, owned by :mod:`predictor.server`.

    Attributes:
        models: served models by name.
        metrics: the metric collectors.
        auth_token: bearer token required on inference routes; None when auth is off.
        draining: set on SIGTERM; new inference requests get 503.
        inflight: inference requests in progress, per model.
    """

    models: dict[str, ImageModel]
    metrics: Metrics
    auth_token: str | None = None
    draining: bool = False
    inflight: dict[str, int] = field(default_factory=dict)
    total_inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def model_label(self, name: str | None) -> str:
        """The metric label for a model name taken from a request."""
        return name if name is not None and name in self.models else UNKNOWN_MODEL

    def authorized(self, header_value: str | None) -> bool:
        """Constant-time check of an ``Authorization`` header against the token."""
        if self.auth_token is None:
            return True
        if not header_value or not header_value.startswith("Bearer "):
            return False
        offered = header_value[len("Bearer ") :].strip().encode()
        return hmac.compare_digest(offered, self.auth_token.encode())

    def enter(self, model: str) -> None:
        """Count a request in flight."""
        self.inflight[model] = self.inflight.get(model, 0) + 1
        self.total_inflight += 1
        self.idle.clear()

    def leave(self, model: str) -> None:
        """Count a request done; wakes the drain when the last one leaves."""
        self.inflight[model] -= 1
        self.total_inflight -= 1
        if self.total_inflight == 0:
            self.idle.set()

    def live(self) -> bool:
        """False once any model's engine keeps failing (Kubernetes should restart the pod)."""
        return not any(model.broken for model in self.models.values())

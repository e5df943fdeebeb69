"""Every Prometheus metric the predictor exports, in one place.

Metrics live in the default registry, which KServe's ``/metrics`` route serves, next to
KServe's own ``request_{preprocess,predict,postprocess}_seconds``. They are created in
``main()`` from the settings (histogram buckets follow the batch size and the request
timeout), never at import. Names are namespaced ``predictor_`` and use base units.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from predictor.config import Settings

log = logging.getLogger(__name__)

PROTOCOLS = ("v1", "v2", "grpc")

# Values of the ``reason`` label of ``predictor_rejected_total`` (see predictor.errors). Each
# model's series start at 0, so that ``rate()`` sees the first rejection (a counter that
# appears at 1 has no earlier sample to rise from) and "no rejections" reads 0, not "no data".
REJECT_REASONS = (
    "queue_full",
    "memory",
    "draining",
    "not_ready",
    "timeout",
    "bad_input",
    "too_large",
    "unauthorized",
    "unknown_model",
    "cancelled",
    "engine_error",
    "internal",
)


#: Values of the ``reason`` label of ``predictor_refused_connections_total``.
CONNECTION_REASONS = (
    "header_timeout",
    "body_timeout",
    "header_bytes",
    "header_count",
    "connections",
)


def batch_size_buckets(max_batch_size: int) -> list[float]:
    """1, 2, 4, ... up to and including ``max_batch_size``."""
    buckets, size = [], 1
    while size < max_batch_size:
        buckets.append(float(size))
        size *= 2
    buckets.append(float(max_batch_size))
    return buckets


#: Buckets of ``predictor_detections_per_image`` (0 is its own bucket: images with nothing).
DETECTION_BUCKETS = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0, 1000.0)


def latency_buckets(timeout_s: float, smallest_s: float = 0.0005) -> list[float]:
    """A 1-2.5-5 ladder from ``smallest_s`` whose last bucket is the request timeout."""
    buckets: list[float] = []
    decade = smallest_s
    while True:
        for step in (1.0, 2.5, 5.0):
            value = round(decade * step, 6)
            if value >= timeout_s:
                return [*buckets, timeout_s]
            buckets.append(value)
        decade *= 10


class Metrics:
    """The predictor's collectors, registered on ``registry``.

    Args:
        settings: bucket boundaries are derived from it.
        registry: where to register; the default registry unless a test gives its own.
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry = REGISTRY) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = registry
        self._max_batch_size = settings.max_batch_size
        self._queue_capacity = settings.queue_capacity
        self._info_labels: dict[str, list[tuple[str, str, str, str]]] = {}
        latency = latency_buckets(settings.request_timeout_s)
        self.requests = Counter(
            "predictor_requests",
            "Inference requests answered, by protocol and HTTP status code.",
            ["model", "protocol", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "predictor_request_duration_seconds",
            "Server-side end-to-end latency of inference requests.",
            ["model", "protocol"],
            buckets=latency,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "predictor_queue_wait_seconds",
            "Time an image waited in the batch queue, from submit to batch start.",
            ["model"],
            buckets=latency,
            registry=registry,
        )
        self.batch_size = Histogram(
            "predictor_batch_size",
            "Images per batch sent to a device.",
            ["model"],
            buckets=batch_size_buckets(settings.max_batch_size),
            registry=registry,
        )
        self.inference_duration = Histogram(
            "predictor_inference_duration_seconds",
            "Device time of one batch (host-to-device copy, forward, device-to-host copy).",
            ["model", "device"],
            buckets=latency,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "predictor_queue_depth",
            "Images queued for batching, not yet on a device.",
            ["model"],
            registry=registry,
        )
        self.inflight = Gauge(
            "predictor_inflight_requests",
            "Inference requests being processed (decoding, queued or running).",
            ["model"],
            registry=registry,
        )
        self.rejected = Counter(
            "predictor_rejected",
            "Requests refused or failed before a result, by reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "predictor_model_info",
            "Served models: architecture, compute dtype and device (value is always 1).",
            ["model", "arch", "dtype", "device"],
            registry=registry,
        )
        self.engine_failures = Gauge(
            "predictor_consecutive_engine_failures",
            "Batches failed in a row; the model reports unhealthy at the configured limit.",
            ["model"],
            registry=registry,
        )
        self.max_batch_size = Gauge(
            "predictor_max_batch_size",
            "Configured largest batch (--max-batch-size): the ceiling of predictor_batch_size.",
            ["model"],
            registry=registry,
        )
        self.queue_capacity = Gauge(
            "predictor_queue_capacity",
            "Configured queue size (--queue-capacity): predictor_queue_depth at which requests "
            "are refused with 503.",
            ["model"],
            registry=registry,
        )
        self.detections = Histogram(
            "predictor_detections_per_image",
            "Detections answered per image (after each request's filters); detectors only.",
            ["model"],
            buckets=DETECTION_BUCKETS,
            registry=registry,
        )
        self.refused_connections = Counter(
            "predictor_refused_connections",
            "HTTP connections refused or cut before a request reached a route, by reason "
            "(header_timeout, body_timeout, header_bytes, header_count, connections).",
            ["reason"],
            registry=registry,
        )
        for reason in CONNECTION_REASONS:
            self.refused_connections.labels(reason=reason)

    def refused_connection(self, reason: str) -> None:
        """Count an HTTP connection refused or cut at the connection level."""
        self.refused_connections.labels(reason=reason).inc()

    def model_observer(self, model: str) -> ModelObserver:
        """The batch observer of one model."""
        return ModelObserver(self, model)

    def watch_model(
        self,
        model: str,
        depth: Callable[[], float],
        inflight: Callable[[], float],
        failures: Callable[[], float],
    ) -> None:
        """Read gauges from live state at scrape time (always exact, no bookkeeping)."""
        self.queue_depth.labels(model=model).set_function(depth)
        self.inflight.labels(model=model).set_function(inflight)
        self.engine_failures.labels(model=model).set_function(failures)

    def describe_model(
        self,
        model: str,
        arch: str,
        dtype: str,
        devices: Iterable[str],
        max_batch_size: int | None = None,
        queue_capacity: int | None = None,
    ) -> None:
        """Publish a served model: its info series, batching limits and zeroed rejections.

        Sets ``predictor_model_info`` to 1 for each device the model runs on, the batch size
        in effect (``max_batch_size``: the tuned one, else the configured one) and the queue
        capacity, and creates ``predictor_rejected_total`` at 0 for every reason.
        """
        info = [(model, arch, dtype, device) for device in devices]
        for labels in info:
            self.model_info.labels(*labels).set(1)
        self._info_labels[model] = info
        effective = self._max_batch_size if max_batch_size is None else max_batch_size
        self.max_batch_size.labels(model=model).set(effective)
        capacity = self._queue_capacity if queue_capacity is None else queue_capacity
        self.queue_capacity.labels(model=model).set(capacity)
        for reason in REJECT_REASONS:
            self.rejected.labels(model=model, reason=reason)

    def forget_model(self, model: str) -> None:
        """Remove an unloaded model's gauges (its counters and histograms keep their totals).

        The live-state gauges no longer read a retired batcher, and ``predictor_model_info``
        lists only what is served.
        """
        for gauge in (self.queue_depth, self.inflight, self.engine_failures):
            _remove(gauge, model)
        for gauge in (self.max_batch_size, self.queue_capacity):
            _remove(gauge, model)
        for labels in self._info_labels.pop(model, []):
            self.model_info.remove(*labels)

    def observe_request(self, model: str, protocol: str, code: int, seconds: float) -> None:
        """Count one answered inference request and its latency."""
        self.requests.labels(model=model, protocol=protocol, code=str(code)).inc()
        self.request_duration.labels(model=model, protocol=protocol).observe(seconds)

    def observe_rejection(self, model: str, reason: str) -> None:
        """Count one request refused or failed for ``reason``."""
        self.rejected.labels(model=model, reason=reason).inc()


def _remove(metric: Gauge, model: str) -> None:
    with contextlib.suppress(KeyError):  # never described: nothing to remove
        metric.remove(model)


class ModelObserver:
    """Batch measurements of one model (see :class:`predictor.runtime.workers.BatchObserver`)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model=model)
        self._queue_wait = metrics.queue_wait.labels(model=model)
        self._inference = metrics.inference_duration
        self._detections_family = metrics.detections
        self._detections: Histogram | None = None  # made on the first detection: detectors only
        self._model = model

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        """Record the batch size and each item's queue wait."""
        self._batch_size.observe(size)
        for wait in queue_waits_s:
            self._queue_wait.observe(wait)

    def batch_finished(self, device: str, seconds: float, ok: bool) -> None:
        """Record device time of a successful batch."""
        if ok:
            self._inference.labels(model=self._model, device=device).observe(seconds)

    def results_counted(self, counts: Sequence[int]) -> None:
        """Record how many detections each answered image held."""
        if self._detections is None:
            self._detections = self._detections_family.labels(model=self._model)
        for count in counts:
            self._detections.observe(count)

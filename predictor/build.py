"""Builds one served model from its directory: network, engines on devices, warm-up, batcher.

Blocking work (weights, tracing, warm-up): the repository runs it on its loader thread,
never on the event loop. The result is a :class:`~predictor.model.ImageModel` whose batcher
is not started yet; the repository starts it and publishes the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from predictor.batcher import DynamicBatcher, Worker
from predictor.decode_pool import DecodePool
from predictor.devices import resolve_devices
from predictor.engine import Engine
from predictor.model import ImageModel
from predictor.model_config import ModelSettings, RequestDefaults
from predictor.model_store import ModelSpec
from predictor.weights import load_module

log = logging.getLogger("predictor")


@dataclass(frozen=True)
class ServerLimits:
    """The server-wide limits every model is built with.

    Attributes:
        max_image_pixels: larger images are refused (413) from their header.
        request_timeout_s: the server's deadline; per-request timeouts can only shorten it.
        max_consecutive_failures: failed batches in a row before unhealthy (0: never).
    """

    max_image_pixels: int
    request_timeout_s: float
    max_consecutive_failures: int


def build_model(
    spec: ModelSpec, settings: ModelSettings, limits: ServerLimits, decode_pool: DecodePool
) -> ImageModel:
    """Load, place on devices and warm up one model.

    Args:
        spec: the model directory's manifest.
        settings: how the model is served (batching, devices, dtype).
        limits: the server-wide limits.
        decode_pool: the shared image-decoding pool.

    Returns:
        The loaded model, its batcher not started.

    Raises:
        ModelStoreError: the weights do not load.
        DeviceError: a requested device is not available.
    """
    started = time.perf_counter()
    devices = resolve_devices(settings.devices)
    module = load_module(spec)
    engines: list[Engine] = []
    for device in devices:
        engine = Engine(
            module,
            spec.input,
            device,
            settings.dtype,
            settings.max_batch_size,
            jit=settings.jit and spec.jit,
            freeze=settings.freeze,
        )
        seconds = engine.warmup()
        log.info(
            "model %s: warmed up on %s (%s, %s) in %.1f s",
            spec.name,
            device,
            engine.dtype_name,
            "TorchScript" if engine.jit else "eager",
            seconds,
        )
        engines.append(engine)
    del module
    batch_size = settings.max_batch_size
    if settings.tune_batch_size:
        batch_size = min(e.best_batch_size() for e in engines)
        curve = ", ".join(f"{n}: {r:.0f}" for n, r in sorted(engines[0].throughput.items()))
        log.info(
            "model %s: images/s by batch size on %s {%s}; batches of up to %d",
            spec.name,
            engines[0].name,
            curve,
            batch_size,
        )
    workers = [
        Worker(device, replica, engine.run)
        for (device, replica), engine in zip(_replicas(devices), engines, strict=True)
    ]
    batcher = DynamicBatcher(
        workers, batch_size, settings.max_batch_delay_s, settings.queue_capacity
    )
    log.info("model %s loaded in %.1f s", spec.name, time.perf_counter() - started)
    return ImageModel(
        spec,
        settings,
        batcher,
        engines,
        RequestDefaults(top_k=min(settings.top_k or spec.top_k, len(spec.labels))),
        decode_pool,
        limits,
    )


def _replicas(devices: list[str]) -> list[tuple[str, int]]:
    """``(device, replica index)`` per engine: a device listed twice runs two engines."""
    seen: dict[str, int] = {}
    out = []
    for device in devices:
        out.append((device, seen.get(device, 0)))
        seen[device] = seen.get(device, 0) + 1
    return out

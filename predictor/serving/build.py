"""Builds one served model from its directory: task, engines on devices, warm-up, batcher.

Blocking work (weights, tracing, warm-up): the repository runs it on its loader thread,
never on the event loop. The result is a :class:`~predictor.serving.model.ImageModel` whose batcher
is not started yet; the repository starts it and publishes the model.
"""

from __future__ import annotations

import logging
import time

from predictor.runtime.batcher import DynamicBatcher
from predictor.runtime.decode_pool import DecodePool
from predictor.runtime.devices import resolve_devices
from predictor.runtime.engine import Engine
from predictor.runtime.workers import Worker
from predictor.serving.model import ImageModel
from predictor.serving.model_config import ModelSettings, ServerLimits
from predictor.store.spec import ModelSpec
from predictor.store.weights import load_module
from predictor.tasks.registry import engine_for, task_for

log = logging.getLogger("predictor")


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
        engine = engine_for(
            spec,
            module,
            device,
            settings.dtype,
            settings.max_batch_size,
            jit=settings.jit,
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
    return ImageModel(spec, task_for(spec), settings, batcher, engines, decode_pool, limits)


def _replicas(devices: list[str]) -> list[tuple[str, int]]:
    """``(device, replica index)`` per engine: a device listed twice runs two engines."""
    seen: dict[str, int] = {}
    out = []
    for device in devices:
        out.append((device, seen.get(device, 0)))
        seen[device] = seen.get(device, 0) + 1
    return out

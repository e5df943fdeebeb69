"""Builds the served models from settings: discovery, engines on devices, warm-up, batchers.

Each model found under ``--model-dir`` gets one engine per device (loaded, traced and
warmed up before it reports ready), a :class:`~predictor.batcher.DynamicBatcher` over
those engines with the batch size tuned at warm-up, and its gauges pointed at live state.
"""

from __future__ import annotations

import logging
import time

from predictor.batcher import DynamicBatcher, Worker
from predictor.config import Settings
from predictor.decode_pool import DecodePool
from predictor.devices import resolve_devices
from predictor.engine import Engine
from predictor.metrics import Metrics
from predictor.model import ImageModel
from predictor.model_store import ModelSpec, discover
from predictor.state import ServingState
from predictor.weights import load_module

log = logging.getLogger("predictor")


def build_models(
    settings: Settings, state: ServingState, decode_pool: DecodePool
) -> dict[str, ImageModel]:
    """Discover, load, place on devices and warm up every model.

    Args:
        settings: server settings.
        state: serving state (metrics; in-flight counts read by the gauges).
        decode_pool: the shared image-decoding pool.

    Returns:
        Loaded, ready models by name (batchers not started yet).
    """
    metrics = state.metrics
    specs = discover(settings.model_dir, settings.model_name)
    devices = resolve_devices(settings.device_list())
    models: dict[str, ImageModel] = {}
    for spec in specs:
        engines: list[Engine] = []

        def build(spec: ModelSpec = spec, engines: list[Engine] = engines) -> DynamicBatcher:
            started = time.perf_counter()
            module = load_module(spec)
            for device in devices:
                engine = Engine(
                    module,
                    spec.input,
                    device,
                    settings.dtype,
                    settings.max_batch_size,
                    jit=settings.jit == "trace" and spec.jit,
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
            log.info("model %s loaded in %.1f s", spec.name, time.perf_counter() - started)
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
            return DynamicBatcher(
                [Worker(name, e.run) for name, e in zip(_unique(devices), engines, strict=True)],
                batch_size,
                settings.max_batch_delay_s,
                settings.queue_capacity,
                observer=metrics.model_observer(spec.name),
            )

        model = ImageModel(
            spec,
            build,
            decode_pool,
            settings.max_image_pixels,
            settings.request_timeout_s,
            settings.max_consecutive_failures,
        )
        model.load()
        batcher = model.batcher
        assert batcher is not None
        _watch(metrics, state, spec.name, batcher)
        metrics.describe_model(
            spec.name,
            spec.arch_label,
            engines[0].dtype_name,
            _unique(devices),
            max_batch_size=batcher.max_batch_size,
        )
        models[spec.name] = model
    return models


def _watch(metrics: Metrics, state: ServingState, name: str, batcher: DynamicBatcher) -> None:
    """Point the model's gauges at its live state."""

    def depth() -> float:
        return float(batcher.depth)

    def inflight() -> float:
        return float(state.inflight.get(name, 0))

    def failures() -> float:
        return float(batcher.consecutive_failures)

    metrics.watch_model(name, depth=depth, inflight=inflight, failures=failures)


def _unique(devices: list[str]) -> list[str]:
    """Worker names: the device, suffixed ``/N`` when a device is listed more than once."""
    seen: dict[str, int] = {}
    names = []
    for device in devices:
        count = seen.get(device, 0)
        seen[device] = count + 1
        names.append(device if count == 0 else f"{device}/{count}")
    return names

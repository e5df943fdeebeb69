"""Runs the REST and gRPC servers over the model repository, and owns the drain.

The REST edge (:mod:`predictor.edge.http_edge`) routes every request itself and the gRPC
service (:mod:`predictor.edge.grpc_service`) answers KServe's v2 messages; both serve the
models the repository (:mod:`predictor.serving.repository`) publishes. ``kserve.ModelServer.start``
is not used: it hands SIGTERM to uvicorn, which closes the listener at once, and it cannot
drain. Here the process owns its signals: on SIGTERM the models stop reporting ready, new
requests get 503 + Retry-After while the listener stays open, every admitted request is
answered, and the process exits 0 within ``--drain-timeout-s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import uvicorn
from grpc import aio
from prometheus_client import REGISTRY

from predictor.config import Settings
from predictor.cpus import available_cpus
from predictor.edge import docs_page
from predictor.edge.connection import ConnectionLimits, protocol_class
from predictor.edge.grpc_edge import GrpcEdge
from predictor.edge.grpc_service import GrpcService, add_to_server
from predictor.edge.http_api import HttpApi, routes
from predictor.edge.http_edge import HttpEdge
from predictor.edge.routes import Router
from predictor.gpu_metrics import GpuCollector
from predictor.metrics import Metrics
from predictor.runtime.budget import (
    DEFAULT_BYTES,
    MemoryBudget,
    container_memory_limit,
    default_budget,
    limit_heap_arenas,
    resident_bytes,
)
from predictor.runtime.decode_pool import DecodePool
from predictor.runtime.threads import name_current_thread
from predictor.serving.model import ImageModel
from predictor.serving.repository import Repository
from predictor.serving.state import ServingState
from predictor.tasks import images

log = logging.getLogger("predictor")


def build_router(settings: Settings, state: ServingState, repository: Repository) -> Router:
    """Every REST route this configuration serves (the docs page's too, when on)."""
    api = HttpApi(settings, state, repository)
    table = routes(api)
    if settings.docs:
        table += docs_page.routes(table)
    return Router(table)


class _UvicornServer(uvicorn.Server):
    """Uvicorn without its own signal handling: the drain owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's limits, set on purpose (docs/operations.md lists them)."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        # Ping idle connections to find dead peers; let clients ping without calls, but
        # not more often than every 10 s.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", int(settings.keep_alive_timeout_s * 1000)),
    ]


async def _run(
    settings: Settings,
    state: ServingState,
    repository: Repository,
    loaded: list[ImageModel],
    budget: MemoryBudget,
) -> int:
    loop = asyncio.get_running_loop()
    for model in loaded:
        repository.publish(model)
    router = build_router(settings, state, repository)

    http = _UvicornServer(
        uvicorn.Config(
            HttpEdge(router, state, settings.max_body_bytes, budget),
            host=settings.host,
            port=settings.http_port,
            http=protocol_class(
                ConnectionLimits(
                    settings.header_timeout_s,
                    settings.body_timeout_s,
                    settings.max_header_bytes,
                    settings.max_headers,
                    settings.max_connections,
                ),
                state.metrics.refused_connection,
            ),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=int(settings.keep_alive_timeout_s),
            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        )
    )
    grpc_server = None
    if settings.enable_grpc:
        grpc_server = aio.server(
            ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="grpc", initializer=name_current_thread
            ),
            interceptors=(GrpcEdge(state),),
            options=grpc_options(settings),
        )
        add_to_server(
            grpc_server,
            GrpcService(state, repository, budget),
            repository_rpcs=settings.model_control == "explicit",
        )
        grpc_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        await grpc_server.start()

    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.info("%s received: draining", name)
            stop.set()
        elif signum == signal.SIGINT:
            log.warning("second SIGINT: exiting without draining")
            os._exit(130)
        else:
            log.info("%s received again: already draining", name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    http_task = asyncio.create_task(http.serve(), name="http")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if http_task.done():
        stop_task.cancel()
        error = http_task.exception()
        log.error("HTTP server stopped: %s", error or "unexpectedly")
        await _close(repository, grpc_server, 0)
        return 1

    drained_s = await _drain(state, settings.drain_timeout_s)
    http.should_exit = True
    await asyncio.gather(http_task, return_exceptions=True)
    await _close(repository, grpc_server, 1)
    log.info("stopped after a %.2f s drain", drained_s)
    return 0


async def _drain(state: ServingState, timeout_s: float) -> float:
    """Refuse new work, answer what every model admitted (up to ``timeout_s``); seconds taken."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    state.closing = True
    models = list(state.models.values())
    inflight = sum(state.inflight.values())
    log.info("draining %d in-flight request(s), up to %.0f s", inflight, timeout_s)
    try:
        await asyncio.wait_for(asyncio.gather(*(m.drain() for m in models)), timeout_s)
    except TimeoutError:
        log.warning("drain timeout: %d request(s) still in flight", sum(state.inflight.values()))
    return loop.time() - started


async def _close(repository: Repository, grpc_server: aio.Server | None, grace_s: float) -> None:
    if grpc_server is not None:
        await grpc_server.stop(grace=grace_s)
    await repository.close()


def serve(settings: Settings) -> int:
    """Load every model, then serve until SIGTERM/SIGINT and a completed drain.

    Returns:
        The process exit code: 0 after a clean drain.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        # torch sizes its CPU thread pool to the node's cores, not the pod's CPU limit.
        torch.set_num_threads(available_cpus())
    # Process-wide settings, made once here and nowhere else: cuDNN picks the fastest
    # kernels per input shape (the engines warm up every batch size), and Pillow's own
    # decompression-bomb guard gives way to --max-image-pixels, checked from each header.
    torch.backends.cudnn.benchmark = True
    images.lift_pillow_bomb_guard()
    state = ServingState(models={}, metrics=Metrics(settings), auth_token=settings.auth_token())
    # Importing torch and KServe leaves ~300k long-lived objects; a full collection walking
    # them stalled every request for ~0.25 s every few seconds under load. Frozen objects
    # are never scanned again. Models are not frozen (about a thousand objects each), so an
    # unloaded model's memory is collected without unfreezing, and without that stall.
    gc.collect()
    gc.freeze()
    limit_heap_arenas()
    budget = MemoryBudget(settings.max_inflight_bytes or DEFAULT_BYTES)
    decode_pool = DecodePool(settings.effective_decode_workers)
    repository = Repository(settings, state, decode_pool, budget)
    loaded = repository.load_at_start(settings.models_to_load())
    if not settings.max_inflight_bytes:
        budget.limit_bytes = default_budget(resident_bytes(), container_memory_limit())
    log.info("memory budget for requests in flight: %d MiB", budget.limit_bytes >> 20)
    # Every visible GPU, not only those of the models loaded now: more may load later.
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        REGISTRY.register(GpuCollector([(f"cuda:{i}", i) for i in range(gpus)]))
    log.info(
        "serving %s on http://%s:%d (gRPC %s)",
        ", ".join(m.name for m in loaded) or "no model yet",
        settings.host,
        settings.http_port,
        settings.grpc_port if settings.enable_grpc else "off",
    )
    try:
        return _event_loop_run(_run(settings, state, repository, loaded, budget))
    finally:
        decode_pool.shutdown()


def _event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (uvicorn[standard] brings it), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with kserve's uvicorn[standard]
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result

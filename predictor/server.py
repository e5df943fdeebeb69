"""Runs KServe's REST and gRPC servers over the built models, and owns the drain.

KServe provides the protocol surface (its ``DataPlane``, v1/v2 REST routes, v2 gRPC
servicer, ``InferRequest``/``InferResponse`` types). ``kserve.ModelServer.start`` is not
used: it hands SIGTERM to uvicorn, which closes the listener at once, and it cannot drain.
Here the process owns its signals: on SIGTERM the models stop reporting ready, new requests
get 503 + Retry-After while the listener stays open, every admitted request is answered,
and the process exits 0 within ``--drain-timeout-s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import warnings
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from grpc import aio
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from prometheus_client import REGISTRY, exposition
from starlette.responses import JSONResponse, Response

from predictor import __version__
from predictor.build import build_models
from predictor.config import Settings, available_cpus
from predictor.dataplane import HardenedDataPlane
from predictor.decode_pool import DecodePool
from predictor.grpc_edge import GrpcEdge
from predictor.http_edge import HttpEdge, install_error_handlers
from predictor.metrics import GpuCollector, Metrics
from predictor.model import ImageModel
from predictor.state import ServingState
from predictor.threads import name_current_thread

log = logging.getLogger("predictor")


def build_app(
    state: ServingState, dataplane: DataPlane, extension: ModelRepositoryExtension
) -> FastAPI:
    """KServe's REST routes plus the predictor's health, readiness and metrics routes."""
    app = FastAPI(
        title="gpu-predictor",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def live() -> Response:
        ok = state.live()
        body = {"live": ok, "status": "alive" if ok else "failing"}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def ready() -> Response:
        ok = not state.draining and all([await m.healthy() for m in state.models.values()])
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), headers={"content-type": content_type})

    app.add_api_route("/", live, methods=["GET"])
    app.add_api_route("/v2/health/live", live, methods=["GET"])
    app.add_api_route("/v2/health/ready", ready, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)
    # Models are fixed at start; KServe's repository load/unload routes would let any client
    # unload a model, so they are not served.
    app.router.routes[:] = [
        r for r in app.router.routes if not getattr(r, "path", "").startswith("/v2/repository")
    ]
    install_error_handlers(app)
    return app


class _UvicornServer(uvicorn.Server):
    """Uvicorn without its own signal handling: the drain owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _run(settings: Settings, state: ServingState) -> int:
    loop = asyncio.get_running_loop()
    models = state.models
    for model in models.values():
        model.start_batcher()
    repository = ModelRepository(models_dir=str(settings.model_dir))
    for model in models.values():
        repository.update(model)
    dataplane = HardenedDataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    app = build_app(state, dataplane, extension)

    http = _UvicornServer(
        uvicorn.Config(
            HttpEdge(app, state, dataplane, settings.max_body_bytes),
            host=settings.host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=65,
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
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(dataplane, extension), grpc_server
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
        await _close(models, grpc_server, 0)
        return 1

    drained_s = await _drain(state, models, settings.drain_timeout_s)
    http.should_exit = True
    await asyncio.gather(http_task, return_exceptions=True)
    await _close(models, grpc_server, 1)
    log.info("stopped after a %.2f s drain", drained_s)
    return 0


async def _drain(state: ServingState, models: Mapping[str, ImageModel], timeout_s: float) -> float:
    """Refuse new work, wait for in-flight requests (up to ``timeout_s``); seconds taken."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    state.draining = True
    for model in models.values():
        model.begin_drain()
    log.info("draining %d in-flight request(s), up to %.0f s", state.total_inflight, timeout_s)
    if state.total_inflight > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.idle.wait(), timeout_s)
    if state.total_inflight:
        log.warning("drain timeout: %d request(s) still in flight", state.total_inflight)
    return loop.time() - started


async def _close(
    models: Mapping[str, ImageModel], grpc_server: aio.Server | None, grace_s: float
) -> None:
    if grpc_server is not None:
        await grpc_server.stop(grace=grace_s)
    for model in models.values():
        if model.batcher is not None:
            await model.batcher.stop()


def serve(settings: Settings) -> int:
    """Load every model, then serve until SIGTERM/SIGINT and a completed drain.

    Returns:
        The process exit code: 0 after a clean drain.
    """
    # KServe's routes use FastAPI's ORJSONResponse, deprecated upstream; not actionable here.
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated.*")
    if "OMP_NUM_THREADS" not in os.environ:
        # torch sizes its CPU thread pool to the node's cores, not the pod's CPU limit.
        torch.set_num_threads(available_cpus())
    state = ServingState(models={}, metrics=Metrics(settings), auth_token=settings.auth_token())
    decode_pool = DecodePool(settings.effective_decode_workers)
    models = build_models(settings, state, decode_pool)
    state.models = models
    # torch, KServe and the models leave millions of long-lived objects; a full collection
    # walking them stalled every request for ~0.25 s every few seconds under load. Frozen
    # objects are never scanned again.
    gc.collect()
    gc.freeze()
    cuda = sorted({d for m in models.values() for d in m.devices() if d.startswith("cuda")})
    if cuda:
        REGISTRY.register(GpuCollector([(d, int(d.split(":")[1])) for d in cuda]))
    log.info(
        "serving %s on http://%s:%d (gRPC %s)",
        ", ".join(models),
        settings.host,
        settings.http_port,
        settings.grpc_port if settings.enable_grpc else "off",
    )
    try:
        return _event_loop_run(_run(settings, state))
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

r"""Locust users for gpu-predictor (and any KServe-style image server), same routes as loadgen.

    uv run --group locust locust -f load-tests/locustfile.py --host http://127.0.0.1:8080
    uv run --group locust locust -f load-tests/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 64 -r 16 -t 60s V2User

Users (pick by class name; all run by default, in equal numbers):

* ``V1User``: ``POST /v1/models/<m>:predict`` with a raw JPEG body;
* ``V1JsonUser``: the same route with ``{"instances": [{"image_bytes": {"b64"}}]}``;
* ``V2User``: ``POST /v2/models/<m>/infer`` with BYTES ``[K]`` base64 strings;
* ``GrpcUser``: ``ModelInfer`` on the gRPC port with BYTES in ``raw_input_contents``.

Settings come from environment variables: ``PREDICTOR_MODEL`` (default ``resnet18``),
``PREDICTOR_IMAGES`` (a folder; default: the generated photo corpus), ``PREDICTOR_THUMBNAILS=1``
(thumbnail corpus instead), ``PREDICTOR_IMAGES_PER_REQUEST`` (K, default 1),
``PREDICTOR_GRPC`` (gRPC ``host:port``, default the ``--host`` host on port 8081).
Users wait for nothing between requests (closed loop); add ``wait_time`` for think time.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import grpc.experimental.gevent as grpc_gevent
from loadlib import corpus
from loadlib.protocols import GRPC_METHOD, GRPC_TO_HTTP, build_bodies
from locust import HttpUser, User, constant, task

grpc_gevent.init_gevent()  # before any channel: grpc's blocking calls yield to greenlets

MODEL = os.environ.get("PREDICTOR_MODEL", "resnet18")
PER_REQUEST = int(os.environ.get("PREDICTOR_IMAGES_PER_REQUEST", "1"))


def _images() -> list[bytes]:
    folder = os.environ.get("PREDICTOR_IMAGES")
    if folder:
        return corpus.load_dir(Path(folder))
    thumbs = os.environ.get("PREDICTOR_THUMBNAILS", "") not in ("", "0")
    return corpus.named("thumbs" if thumbs else "photos")


IMAGES = _images()


class _BodyCycle:
    """Prebuilt bodies of one protocol, handed out in turn."""

    def __init__(self, protocol: str) -> None:
        per_request = 1 if protocol == "v1" else PER_REQUEST  # a raw body holds one image
        bodies, self.content_type = build_bodies(IMAGES, protocol, MODEL, per_request)
        self._next = itertools.cycle(bodies)

    def next(self) -> bytes:
        """The next body."""
        return next(self._next)


class V1User(HttpUser):
    """Raw JPEG bodies to the v1 predict route (one image per request)."""

    wait_time = constant(0)
    protocol = "v1"

    def on_start(self) -> None:
        """Build this user's request bodies."""
        self.bodies = _BodyCycle(self.protocol)
        self.path = f"/v1/models/{MODEL}:predict"
        self.label = f"{self.protocol} {self.path}"

    @task
    def predict(self) -> None:
        """One request."""
        self.client.post(
            self.path,
            data=self.bodies.next(),
            headers={"Content-Type": self.bodies.content_type},
            name=self.label,
        )


class V1JsonUser(V1User):
    """v1 JSON instances (base64), ``PREDICTOR_IMAGES_PER_REQUEST`` images per request."""

    protocol = "v1-json"


class V2User(V1User):
    """v2 BYTES tensors (base64 JSON) to the v2 infer route."""

    protocol = "v2"

    def on_start(self) -> None:
        """Build the bodies; the v2 route."""
        super().on_start()
        self.path = f"/v2/models/{MODEL}/infer"
        self.label = f"v2 {self.path}"


class GrpcUser(User):
    """``ModelInfer`` over gRPC with raw, length-prefixed BYTES contents."""

    wait_time = constant(0)

    def on_start(self) -> None:
        """Open the channel (gRPC port: ``PREDICTOR_GRPC`` or the host's 8081)."""
        host = (self.host or "http://127.0.0.1:8080").split("://", 1)[-1].rsplit(":", 1)[0]
        target = os.environ.get("PREDICTOR_GRPC", f"{host}:8081")
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
        self.call = self.channel.unary_unary(GRPC_METHOD)
        self.bodies = _BodyCycle("grpc")

    def on_stop(self) -> None:
        """Close the channel."""
        self.channel.close()

    @task
    def infer(self) -> None:
        """One call, reported to locust as a ``grpc`` request."""
        body = self.bodies.next()
        started = time.perf_counter()
        error: Any = None
        try:
            self.call(body, timeout=60)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            error = RuntimeError(f"{GRPC_TO_HTTP.get(code, code.name)} {exc.details()}")  # type: ignore[attr-defined]
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"grpc ModelInfer {MODEL}",
            response_time=1000 * (time.perf_counter() - started),
            response_length=0,
            exception=error,
            context={},
        )

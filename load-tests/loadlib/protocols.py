"""Request builders and senders for the KServe routes: v1 raw, v1 JSON, v2 JSON, v2 gRPC.

Request bodies are built once, before the run (base64, JSON and protobuf encoding cost the
client nothing while it measures); a sender then only picks body ``i`` and sends it. HTTP
goes through aiohttp (HTTP/1.1 keep-alive, a connection pool as large as the concurrency),
gRPC through ``grpc.aio`` with pre-serialised ``ModelInferRequest`` messages.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import grpc
from grpc import aio

PROTOCOLS = ("v1", "v1-json", "v2", "grpc")
#: gRPC status codes as the HTTP code this project's edges map them from.
GRPC_TO_HTTP: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "200",
    grpc.StatusCode.INVALID_ARGUMENT: "400",
    grpc.StatusCode.UNAUTHENTICATED: "401",
    grpc.StatusCode.NOT_FOUND: "404",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "413",
    grpc.StatusCode.CANCELLED: "499",
    grpc.StatusCode.INTERNAL: "500",
    grpc.StatusCode.UNAVAILABLE: "503",
    grpc.StatusCode.DEADLINE_EXCEEDED: "504",
}
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: Prebuilt bodies stop growing past this many bytes (multi-image requests of big photos).
BODY_BUDGET_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    """Where and how requests go.

    Attributes:
        url: the server's base URL, e.g. ``http://127.0.0.1:8080``.
        model: the model name in the route.
        protocol: one of :data:`PROTOCOLS`.
        grpc_port: the gRPC port (``grpc`` only; the host comes from ``url``).
        path: a route replacing the protocol's own (peers with other routes).
        headers: extra HTTP headers / gRPC metadata.
        timeout_s: per-request timeout.
    """

    url: str
    model: str
    protocol: str = "v1"
    grpc_port: int = 8081
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0

    def endpoint(self) -> str:
        """The full URL requests are posted to (HTTP protocols)."""
        if self.path is not None:
            return self.url.rstrip("/") + self.path
        if self.protocol == "v2":
            return f"{self.url.rstrip('/')}/v2/models/{self.model}/infer"
        return f"{self.url.rstrip('/')}/v1/models/{self.model}:predict"

    def grpc_target(self) -> str:
        """``host:port`` of the gRPC server."""
        host = self.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        return f"{host}:{self.grpc_port}"


class Sender(Protocol):
    """Sends prebuilt request ``i`` and reports its outcome as a status key."""

    samples: dict[str, str]

    async def start(self) -> None:
        """Open connections (inside the running event loop)."""

    async def send(self, index: int) -> str:
        """Send body ``index`` (modulo the number of bodies); ``"200"``, ``"503"``, ..."""

    async def close(self) -> None:
        """Release connections."""


def kserve_pb2() -> Any:
    """KServe's generated ``grpc_predict_v2_pb2`` module.

    Importing anything under ``kserve`` runs ``kserve/__init__``, whose model server parses
    ``sys.argv`` at import; the import happens with a bare ``argv`` so ours are not parsed.
    """
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        from kserve.protocol.grpc import grpc_predict_v2_pb2
    finally:
        sys.argv = saved
    return grpc_predict_v2_pb2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _groups(images: Sequence[bytes], per_request: int) -> list[list[bytes]]:
    """Image lists of the prebuilt requests: every image used, total size bounded."""
    mean = sum(len(i) for i in images) / len(images)
    affordable = int(BODY_BUDGET_BYTES // max(1.0, mean * per_request * 1.4))
    count = max(math.ceil(len(images) / per_request), min(len(images), affordable), 1)
    return [
        [images[(g * per_request + j) % len(images)] for j in range(per_request)]
        for g in range(count)
    ]


def build_bodies(
    images: Sequence[bytes], protocol: str, model: str, per_request: int = 1
) -> tuple[list[bytes], str]:
    """Prebuilt request bodies and their content type.

    Args:
        images: encoded images.
        protocol: one of :data:`PROTOCOLS` (``v1`` with several images per request
            becomes ``v1-json``: a raw body holds one image).
        model: the model name (gRPC messages carry it).
        per_request: images per request.

    Returns:
        ``(bodies, content_type)``; gRPC bodies are serialised ``ModelInferRequest``.
    """
    if not images:
        raise ValueError("no images to send")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    groups = _groups(images, per_request)
    if protocol == "v1" and per_request == 1:
        return [g[0] for g in groups], "image/jpeg"
    if protocol in ("v1", "v1-json"):
        return [
            json.dumps({"instances": [{"image_bytes": {"b64": _b64(i)}} for i in g]}).encode()
            for g in groups
        ], "application/json"
    if protocol == "v2":
        return [
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "BYTES",
                            "shape": [len(g)],
                            "data": [_b64(i) for i in g],
                        }
                    ]
                }
            ).encode()
            for g in groups
        ], "application/json"
    pb = kserve_pb2()
    bodies = []
    for group in groups:
        request = pb.ModelInferRequest(
            model_name=model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="image", datatype="BYTES", shape=[len(group)]
                )
            ],
            raw_input_contents=[b"".join(struct.pack("<I", len(i)) + i for i in group)],
        )
        bodies.append(request.SerializeToString())
    return bodies, "application/grpc"


class HttpSender:
    """POSTs prebuilt bodies over aiohttp with a keep-alive pool of ``pool_size``.

    aiohttp, not httpx: on this 2-core box aiohttp's client costs ~4x less CPU per request
    (see docs/benchmarks.md), and a load generator must not be the bottleneck.
    """

    def __init__(
        self,
        target: Target,
        bodies: Sequence[bytes],
        content_type: str,
        pool_size: int,
    ) -> None:
        self.samples: dict[str, str] = {}
        self._url = target.endpoint()
        self._bodies = list(bodies)
        self._headers = {"Content-Type": content_type, **target.headers}
        self._pool_size = pool_size
        self._timeout = aiohttp.ClientTimeout(total=target.timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the session and its connection pool."""
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, limit_per_host=self._pool_size, ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def send(self, index: int) -> str:
        """POST body ``index``; the status code, ``timeout`` or ``error:<Type>``."""
        assert self._session is not None, "start() first"
        body = self._bodies[index % len(self._bodies)]
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as reply:
                content = await reply.read()
                status = str(reply.status)
                if reply.status != 200 and status not in self.samples:
                    self.samples[status] = content[:300].decode("utf-8", "replace")
                return status
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            key = f"error:{type(exc).__name__}"
            self.samples.setdefault(key, str(exc)[:300])
            return key

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()


class GrpcSender:
    """Calls ``ModelInfer`` with prebuilt, serialised requests over one HTTP/2 channel."""

    def __init__(self, target: Target, bodies: Sequence[bytes]) -> None:
        self.samples: dict[str, str] = {}
        self._target = target.grpc_target()
        self._bodies = list(bodies)
        self._timeout_s = target.timeout_s
        self._metadata = tuple((k.lower(), v) for k, v in target.headers.items())
        self._channel: aio.Channel | None = None
        self._call: aio.UnaryUnaryMultiCallable | None = None

    async def start(self) -> None:
        """Open the channel (serialisers are identities: bodies are bytes already)."""
        self._channel = aio.insecure_channel(
            self._target,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        self._call = self._channel.unary_unary(GRPC_METHOD)

    async def send(self, index: int) -> str:
        """One ``ModelInfer`` call; the HTTP-equivalent code of its status."""
        assert self._call is not None, "start() first"
        body = self._bodies[index % len(self._bodies)]
        try:
            await self._call(body, timeout=self._timeout_s, metadata=self._metadata or None)
            return "200"
        except aio.AioRpcError as exc:
            code = exc.code()
            key = GRPC_TO_HTTP.get(code, f"grpc:{code.name}")
            if key not in self.samples:
                self.samples[key] = f"{code.name}: {exc.details()}"[:300]
            return key

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()


def make_sender(
    target: Target, images: Sequence[bytes], per_request: int, pool_size: int
) -> Sender:
    """The sender for ``target.protocol`` with its bodies prebuilt."""
    bodies, content_type = build_bodies(images, target.protocol, target.model, per_request)
    if target.protocol == "grpc":
        return GrpcSender(target, bodies)
    return HttpSender(target, bodies, content_type, pool_size)

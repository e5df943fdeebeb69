"""A hostile client against a real server: slow, oversized, flooding, malformed, corrupt.

One server with short connection limits (1 s header and body timeouts, 40 connections, a
small memory budget), auth on and model control explicit, driven over raw sockets, HTTP and
gRPC. Every case asserts what a client sees (a 4xx in the ``{"error": ...}`` shape, or a
closed connection, never a 5xx), that nothing is held past its timeout, and that the
server still answers correctly afterwards, with no traceback in its log.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from PIL import Image

from tests.conftest import StartServer
from tests.support import DIGITS, ROOT, PredictorProcess, digit_samples, metric

sys.path.insert(0, str(ROOT / "load-tests"))
from loadlib.corpus import ramp_png16

TOKEN = "h0stile-test-token"  # noqa: S105 - a test token
AUTH = {"authorization": f"Bearer {TOKEN}"}
TIMEOUT_S = 1.0
MAX_CONNECTIONS = 80
BUDGET = 700 * 2**20
SAMPLES = digit_samples()
V1 = "/v1/models/digits:predict"


@pytest.fixture(scope="module")
def server(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PredictorProcess]:
    token = tmp_path_factory.mktemp("hostile") / "token"
    token.write_text(TOKEN)
    args = [
        *("--model-dir", str(DIGITS), "--auth-token-file", str(token)),
        *("--model-control", "explicit"),
        *("--header-timeout-s", str(TIMEOUT_S), "--body-timeout-s", str(TIMEOUT_S)),
        *("--max-connections", str(MAX_CONNECTIONS), "--max-inflight-bytes", str(BUDGET)),
        *("--max-body-bytes", str(16 * 2**20), "--decode-workers", "2"),
    ]
    process = start_server(args, ["digits"])
    offset = len(process.log())
    yield process
    log = process.log()[offset:]
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
    assert " 500 " not in log


def raw(server: PredictorProcess, payload: bytes, pause_s: float = 0.0) -> tuple[bytes, float]:
    """Send ``payload`` on a fresh connection (``pause_s`` between bytes of a slow client);
    everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        try:
            if pause_s:
                for byte in payload:
                    sock.sendall(bytes([byte]))
                    time.sleep(pause_s)
            else:
                sock.sendall(payload)
        except OSError:
            pass  # the server closed on us mid-send: what it answered is read below
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if _complete(answer):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, time.monotonic() - started


def _complete(answer: bytes) -> bool:
    """A whole response is in (headers and its Content-Length of body)."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def still_serving(server: PredictorProcess) -> None:
    reply = httpx.post(
        f"{server.url}{V1}",
        content=SAMPLES[6],
        headers={"content-type": "image/png", **AUTH},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0][0]["label"] == "6"


# -- slow and incomplete requests ----------------------------------------------------------------


def test_a_stalled_body_is_cut_off_with_408(server: PredictorProcess) -> None:
    head = (
        f"POST {V1} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    answer, took = raw(server, head + b"x" * 100)
    print(f"\nstalled body answered after {took:.2f} s")
    assert status_and_body(answer) == (408, {"error": "request body not received within 1 s"})
    assert TIMEOUT_S - 0.05 <= took < TIMEOUT_S + 3
    still_serving(server)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n",  # no end of headers
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 50,  # a header never done
    ],
    ids=["no-blank-line", "unfinished-header"],
)
def test_incomplete_headers_are_cut_off_with_408(
    server: PredictorProcess, request_bytes: bytes
) -> None:
    answer, took = raw(server, request_bytes)
    status, body = status_and_body(answer)
    assert (status, body) == (408, {"error": "request headers not received within 1 s"})
    assert took < TIMEOUT_S + 3


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: PredictorProcess) -> None:
    slowloris = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 40 + b"\r\n\r\n"
    answer, took = raw(server, slowloris, pause_s=0.05)  # 2.5 s of trickle for a 1 s limit
    assert status_and_body(answer)[0] == 408
    assert took < 2.5 + 3


def test_idle_connections_are_closed(server: PredictorProcess) -> None:
    started = time.monotonic()
    sockets = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(20)]
    try:
        for sock in sockets:
            sock.settimeout(TIMEOUT_S + 5)
            assert sock.recv(1) == b""  # closed by the server, nothing said
    finally:
        for sock in sockets:
            sock.close()
    assert time.monotonic() - started < TIMEOUT_S + 5
    counted = metric(
        server.metrics(), "predictor_refused_connections_total", reason="header_timeout"
    )
    assert counted >= 20


# -- header limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (b"X-Big: " + b"a" * 1_000_000 + b"\r\n", "request headers exceed 65536 bytes"),
        (b"X-Request-Id: " + b"r" * 10_000_000 + b"\r\n", "request headers exceed 65536 bytes"),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(100_000)), "more than 100 request headers"),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), "more than 100 request headers"),
    ],
    ids=["1MB-header", "10MB-request-id", "100000-headers", "101-headers"],
)
def test_header_bombs_are_431(server: PredictorProcess, headers: bytes, message: str) -> None:
    answer, _ = raw(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_and_body(answer) == (431, {"error": message})
    still_serving(server)


def test_a_long_url_counts_against_the_header_bytes(server: PredictorProcess) -> None:
    answer, _ = raw(server, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_and_body(answer)[0] == 431


def test_headers_within_the_limits_are_served(server: PredictorProcess) -> None:
    headers = {f"x-h{i}": "v" * 500 for i in range(90)}
    reply = httpx.get(f"{server.url}/v2/health/live", headers=headers, timeout=30)
    assert reply.status_code == 200


# -- connection flood ----------------------------------------------------------------------------


def test_a_connection_flood_is_refused_and_the_server_recovers(server: PredictorProcess) -> None:
    held = [
        socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(MAX_CONNECTIONS)
    ]
    try:
        time.sleep(0.2)
        answer, _ = raw(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = status_and_body(answer)
        assert status == 503
        assert body == {"error": "too many open connections; retry shortly"}
        assert b"retry-after: 1" in answer.lower()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the held ones are gone once the server sees it
        try:
            still_serving(server)
            break
        except (AssertionError, httpx.HTTPError):
            time.sleep(0.1)
    still_serving(server)


# -- credentials ---------------------------------------------------------------------------------


def test_two_credentials_are_400_on_both_transports(server: PredictorProcess) -> None:
    request = (
        f"POST {V1} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Authorization: Bearer wrong\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(SAMPLES[1])}\r\n\r\n"
    ).encode() + SAMPLES[1]
    answer, _ = raw(server, request)
    assert status_and_body(answer) == (
        400,
        {"error": "the request holds more than one Authorization header"},
    )
    message = pb.ModelInferRequest(model_name="digits", raw_input_contents=[b"\x00\x00\x00\x00"])
    message.inputs.add(name="image", datatype="BYTES", shape=[1])
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}"))
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(message, timeout=30, metadata=metadata)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("padding", ["\xa0", "\x85", "\u3000"])
def test_only_ascii_blanks_are_trimmed_around_the_token(
    server: PredictorProcess, padding: str
) -> None:
    value = f"Bearer {padding}{TOKEN}{padding}".encode()
    request = b"GET /v2/models/digits HTTP/1.1\r\nHost: x\r\nAuthorization: " + value + b"\r\n\r\n"
    answer, _ = raw(server, request)
    assert status_and_body(answer)[0] == 401
    padded = b"Bearer \t " + TOKEN.encode() + b" \t"
    answer, _ = raw(
        server,
        b"GET /v2/models/digits HTTP/1.1\r\nHost: x\r\nAuthorization: " + padded + b"\r\n\r\n",
    )
    assert status_and_body(answer)[0] == 200


# -- routes and RPCs that are not served, or not well-formed ---------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/models/digits:explain"),
        ("POST", "/v2/models/digits/generate"),
        ("POST", "/v2/models/digits/generate_stream"),
        ("POST", "/v2/models/digits/infer_stream"),
        ("POST", "/openai/v1/completions"),
        ("GET", "/v2/models/digits/stats"),
        ("POST", "/v2/repository/models/digits/reload"),
        ("DELETE", "/v2/repository/models/digits/unload"),
    ],
)
def test_routes_kserve_adds_that_we_do_not_serve(
    server: PredictorProcess, method: str, path: str
) -> None:
    reply = httpx.request(method, f"{server.url}{path}", headers=AUTH, timeout=30)
    assert reply.status_code in (404, 405), (path, reply.text)
    assert list(reply.json()) == ["error"]


def test_grpc_malformed_messages_repeated_loads_and_unknown_models(
    server: PredictorProcess,
) -> None:
    metadata = tuple(AUTH.items())
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method in ("ModelInfer", "ModelReady", "RepositoryModelLoad"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as raised:
                call(b"\xff\xff\xff\xff not a protobuf", timeout=30, metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "Traceback" not in (raised.value.details() or "")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        load = pb.RepositoryModelLoadRequest(model_name="digits")
        assert stub.RepositoryModelLoad(load, timeout=120, metadata=metadata).isLoaded  # reload
        with pytest.raises(grpc.RpcError) as raised:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="nope"), timeout=30, metadata=metadata
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    still_serving(server)


# -- JPEGs: valid ones of every kind pass, corrupt ones are 400 ----------------------------------


def _photo_jpeg(**options: Any) -> bytes:
    rng = np.random.default_rng(5)
    gradient = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3)
    pixels = np.clip(gradient + rng.normal(0, 20, gradient.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    mode = options.pop("mode", "RGB")
    image.convert(mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _valid_jpegs() -> dict[str, bytes]:
    import simplejpeg
    import torch
    from torchvision.io import encode_jpeg

    pixels = np.asarray(Image.open(io.BytesIO(_photo_jpeg())).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "pillow-baseline": _photo_jpeg(quality=90),
        "pillow-progressive": _photo_jpeg(progressive=True),
        "pillow-optimized": _photo_jpeg(optimize=True),
        "pillow-restart-markers": _photo_jpeg(restart_marker_blocks=4),
        "pillow-444": _photo_jpeg(subsampling=0),
        "pillow-420": _photo_jpeg(subsampling=2),
        "pillow-grayscale": _photo_jpeg(mode="L"),
        "pillow-cmyk": _photo_jpeg(mode="CMYK"),
        "pillow-exif-rotated": _photo_jpeg(exif=exif),
        "pillow-icc-holding-sos-bytes": _photo_jpeg(icc_profile=b"\xff\xda" * 400_000),
        "pillow-comment-holding-sos-bytes": _photo_jpeg(comment=b"\xff\xda" * 30_000),
        "simplejpeg": simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=85),
        "torchvision": encode_jpeg(torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous())
        .numpy()
        .tobytes(),
    }


def test_valid_jpegs_from_several_encoders_all_pass(server: PredictorProcess) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        for name, data in _valid_jpegs().items():
            reply = client.post(V1, content=data, headers={"content-type": "image/jpeg"})
            assert reply.status_code == 200, (name, reply.text)


def _corrupt_jpegs() -> dict[str, bytes]:
    good = _photo_jpeg(quality=90)
    sos = good.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(good[sos + 2 : sos + 4], "big")
    noise = np.random.default_rng(2).integers(0, 255, 2_000_000, dtype=np.uint8).tobytes()
    sof = good.index(b"\xff\xc0")
    huge_frame = bytearray(good)
    huge_frame[sof + 5 : sof + 9] = (3000).to_bytes(2, "big") * 2
    lossless = bytearray(good)
    lossless[sof + 1] = 0xC3
    return {
        "truncated-scan": good[: scan_start + (len(good) - scan_start) // 2],
        "no-end-of-image": good[:-2],
        "random-entropy-data": good[:scan_start] + noise.replace(b"\xff", b"\xfe") + b"\xff\xd9",
        "frame-larger-than-its-scan": bytes(huge_frame),
        "lossless-sof3": bytes(lossless),
        "header-only": good[:scan_start],
    }


@pytest.mark.parametrize("name", sorted(_corrupt_jpegs()))
def test_corrupt_jpegs_are_400_naming_the_problem(server: PredictorProcess, name: str) -> None:
    data = _corrupt_jpegs()[name]
    reply = httpx.post(
        f"{server.url}{V1}",
        content=data,
        headers={"content-type": "image/jpeg", **AUTH},
        timeout=60,
    )
    assert reply.status_code == 400, (name, reply.text)
    message = reply.json()["error"]
    assert "JPEG" in message or "truncated" in message or "corrupt" in message, message


# -- memory bursts -------------------------------------------------------------------------------


def _rss(server: PredictorProcess) -> float:
    return metric(server.metrics(), "process_resident_memory_bytes")


def test_memory_bursts_stay_in_budget_and_memory_goes_back(server: PredictorProcess) -> None:
    """50 concurrent 10 MB bodies, then four requests of four 16-megapixel 16-bit PNGs.

    RSS is read before, at its peak (sampled while the bursts run) and 15 s after; the
    bursts answer 200, 400 (the 10 MB bodies are not images) or 503 (the budget is taken),
    never anything else, and the memory goes back to within 25% of where it started.
    """
    before = _rss(server)
    codes: Counter[int] = Counter()
    body = np.random.default_rng(9).integers(0, 255, 10 * 2**20, dtype=np.uint8).tobytes()
    png = ramp_png16(4000, 4000)
    images_body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [4],
                "data": [__import__("base64").b64encode(png).decode()] * 4,
            }
        ]
    }

    def post_body() -> int:
        return httpx.post(
            f"{server.url}{V1}",
            content=body,
            headers={"content-type": "image/png", **AUTH},
            timeout=120,
        ).status_code

    def post_pngs() -> int:
        return httpx.post(
            f"{server.url}/v2/models/digits/infer", json=images_body, headers=AUTH, timeout=120
        ).status_code

    def run(calls: list[Any]) -> int:
        """Run calls concurrently; the peak RSS while they ran."""
        top = before
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
            futures = [pool.submit(call) for call in calls]
            while not all(f.done() for f in futures):
                top = max(top, _rss(server))
                time.sleep(0.1)
            codes.update(f.result() for f in futures)
        return int(top)

    peak = max(run([post_body] * 50), run([post_pngs] * 4))
    time.sleep(15)
    after = _rss(server)
    figures = (
        f"memory bursts: {dict(codes)}; RSS before {before / 2**20:.0f} MiB, peak "
        f"{peak / 2**20:.0f} MiB, 15 s after {after / 2**20:.0f} MiB ({after / before - 1:+.1%})"
    )
    print(f"\n{figures}")
    assert set(codes) <= {200, 400, 503}, figures
    assert codes[400] > 0, figures  # some 10 MB bodies were taken and refused as not images
    assert codes[200] > 0, figures  # and images of 16 megapixels were decoded
    assert after <= before * 1.25, figures
    assert peak <= before + 1.5 * BUDGET + 200 * 2**20  # held to the budget (plus working slack)
    still_serving(server)

"""The real server on loopback: every route, the demo model's answers, bursts and errors."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
from collections.abc import Sequence
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from PIL import Image

from predictor.store.manifest import read_manifest
from tests.conftest import StartServer
from tests.support import DIGITS, PredictorProcess, digit_samples, encode, metric

SAMPLES = digit_samples()
PNG3 = SAMPLES[3]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1_raw(
    server: PredictorProcess, body: bytes, content_type: str = "image/png"
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/digits:predict",
        content=body,
        headers={"content-type": content_type},
        timeout=30,
    )


def v2_bytes(
    server: PredictorProcess, images: Sequence[bytes], **parameters: Any
) -> httpx.Response:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [b64(i) for i in images],
            }
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=30)


def grpc_infer(
    server: PredictorProcess, images: Sequence[bytes], top_k: int | None = None
) -> pb.ModelInferResponse:
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    request = pb.ModelInferRequest(
        model_name="digits",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image", datatype="BYTES", shape=[len(images)]
            )
        ],
        raw_input_contents=[raw],
        parameters={"top_k": pb.InferParameter(int64_param=top_k)} if top_k else {},
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        response: pb.ModelInferResponse = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, timeout=30
        )
        return response


def v1_top(response: httpx.Response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(p["label"], p["score"]) for p in response.json()["predictions"][0]]


def v2_tops(response: httpx.Response) -> list[list[tuple[str, float]]]:
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    n, k = outputs["labels"]["shape"]
    labels, scores = outputs["labels"]["data"], outputs["scores"]["data"]
    return [[(labels[i * k + j], scores[i * k + j]) for j in range(k)] for i in range(n)]


def grpc_tops(response: pb.ModelInferResponse) -> list[list[tuple[str, float]]]:
    names = [o.name for o in response.outputs]
    shapes = {o.name: list(o.shape) for o in response.outputs}
    raw = dict(zip(names, response.raw_output_contents, strict=True))
    n, k = shapes["labels"]
    labels, offset = [], 0
    while offset < len(raw["labels"]):
        (length,) = struct.unpack_from("<I", raw["labels"], offset)
        labels.append(raw["labels"][offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    scores = np.frombuffer(raw["scores"], dtype="<f4").tolist()
    return [[(labels[i * k + j], scores[i * k + j]) for j in range(k)] for i in range(n)]


def assert_same_top(
    a: Sequence[tuple[str, float]], b: Sequence[tuple[str, float]], atol: float = 1e-5
) -> None:
    assert [label for label, _ in a] == [label for label, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=atol)


def normalised_tensor(png: bytes) -> list[Any]:
    spec = read_manifest(DIGITS, "digits").input
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    tensor = (pixels / 255.0 - spec.mean[0]) / spec.std[0]
    result: list[Any] = tensor[None, None].tolist()
    return result


# -- routes ------------------------------------------------------------------------------------


def test_demo_model_classifies_its_samples(digits_server: PredictorProcess) -> None:
    for digit, png in SAMPLES.items():
        top = v1_top(v1_raw(digits_server, png))
        assert top[0][0] == str(digit)
        assert len(top) == 3  # the manifest's top_k


@pytest.mark.parametrize(
    ("fmt", "content_type", "options"),
    [
        ("JPEG", "image/jpeg", {"quality": 98}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("BMP", "image/bmp", {}),
        ("PNG", "application/octet-stream", {}),
    ],
)
def test_v1_raw_body_formats(
    digits_server: PredictorProcess, fmt: str, content_type: str, options: dict[str, Any]
) -> None:
    image = Image.open(io.BytesIO(SAMPLES[7]))
    top = v1_top(v1_raw(digits_server, encode(image, fmt, **options), content_type))
    assert top[0][0] == "7"


def test_same_image_same_top_k_through_every_route(digits_server: PredictorProcess) -> None:
    reference = v1_top(v1_raw(digits_server, PNG3))
    as_json = httpx.post(
        f"{digits_server.url}/v1/models/digits:predict",
        json={"instances": [{"image_bytes": {"b64": b64(PNG3)}}]},
        timeout=30,
    )
    assert_same_top(v1_top(as_json), reference)
    assert_same_top(v2_tops(v2_bytes(digits_server, [PNG3]))[0], reference)
    tensor = {
        "inputs": [
            {
                "name": "tensor",
                "datatype": "FP32",
                "shape": [1, 1, 32, 32],
                "data": normalised_tensor(PNG3),
            }
        ]
    }
    fp32 = httpx.post(f"{digits_server.url}/v2/models/digits/infer", json=tensor, timeout=30)
    assert_same_top(v2_tops(fp32)[0], reference, atol=1e-4)
    assert_same_top(grpc_tops(grpc_infer(digits_server, [PNG3]))[0], reference)


def test_multi_image_requests_answer_in_order(digits_server: PredictorProcess) -> None:
    digits = [5, 0, 9, 2]
    images = [SAMPLES[d] for d in digits]
    v1 = httpx.post(
        f"{digits_server.url}/v1/models/digits:predict",
        json={"instances": [{"image_bytes": {"b64": b64(i)}} for i in images]},
        timeout=30,
    )
    assert [p[0]["label"] for p in v1.json()["predictions"]] == [str(d) for d in digits]
    assert [t[0][0] for t in v2_tops(v2_bytes(digits_server, images))] == [str(d) for d in digits]
    assert [t[0][0] for t in grpc_tops(grpc_infer(digits_server, images))] == [
        str(d) for d in digits
    ]


def test_top_k_is_overridable_per_request(digits_server: PredictorProcess) -> None:
    v1 = httpx.post(
        f"{digits_server.url}/v1/models/digits:predict",
        json={"instances": [b64(PNG3)], "parameters": {"top_k": 5}},
        timeout=30,
    )
    assert len(v1.json()["predictions"][0]) == 5
    v2 = v2_bytes(digits_server, [PNG3, SAMPLES[4]], top_k=1)
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["labels"]["shape"] == [2, 1]
    assert outputs["class_ids"]["datatype"] == "INT64"
    assert outputs["class_ids"]["data"] == [3, 4]
    assert len(grpc_tops(grpc_infer(digits_server, [PNG3], top_k=10))[0]) == 10


def test_metadata_and_readiness(digits_server: PredictorProcess) -> None:
    meta = httpx.get(f"{digits_server.url}/v2/models/digits").json()
    assert {(i["name"], i["datatype"]) for i in meta["inputs"]} == {
        ("image", "BYTES"),
        ("tensor", "FP32"),
    }
    assert [o["name"] for o in meta["outputs"]] == ["labels", "scores", "class_ids"]
    assert httpx.get(f"{digits_server.url}/v2/models/digits/ready").status_code == 200
    assert httpx.get(f"{digits_server.url}/v2/models/unknown/ready").status_code == 404
    assert httpx.get(f"{digits_server.url}/v2/health/live").json()["live"] is True
    with grpc.insecure_channel(digits_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10).ready
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=10)
        assert [o.name for o in metadata.outputs] == ["labels", "scores", "class_ids"]


# -- errors ------------------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert fragment in body["error"]
    assert "\n" not in body["error"]
    assert "Traceback" not in body["error"]


def test_bad_inputs_are_400_with_a_one_line_reason(digits_server: PredictorProcess) -> None:
    url = digits_server.url
    assert_error(v1_raw(digits_server, b""), 400, "empty")
    assert_error(v1_raw(digits_server, PNG3[: len(PNG3) // 2]), 400, "corrupt or truncated")
    assert_error(
        v1_raw(digits_server, b"GIF89a" + b"\0" * 40, "image/gif"), 400, "not a supported image"
    )
    assert_error(v1_raw(digits_server, b"hello", "image/png"), 400, "not a supported image")
    bad_json = httpx.post(
        f"{url}/v1/models/digits:predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_error(bad_json, 400, "")
    assert_error(
        httpx.post(f"{url}/v1/models/digits:predict", json={"instances": ["%%%"]}), 400, "base64"
    )
    wrong_type = {"inputs": [{"name": "image", "datatype": "INT32", "shape": [1], "data": [1]}]}
    assert_error(httpx.post(f"{url}/v2/models/digits/infer", json=wrong_type), 400, "INT32")
    wrong_shape = {
        "inputs": [
            {"name": "tensor", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}
        ]
    }
    assert_error(
        httpx.post(f"{url}/v2/models/digits/infer", json=wrong_shape), 400, "shape [3, 32, 32]"
    )
    malformed_v2 = httpx.post(f"{url}/v2/models/digits/infer", json={"inputs": "x"})
    assert_error(malformed_v2, 400, "malformed request")
    assert v1_top(v1_raw(digits_server, PNG3))[0][0] == "3"  # still serving


def test_unknown_model_is_404(digits_server: PredictorProcess) -> None:
    assert_error(
        httpx.post(f"{digits_server.url}/v1/models/nope:predict", content=PNG3), 404, "nope"
    )
    assert_error(
        httpx.post(f"{digits_server.url}/v2/models/nope/infer", json={"inputs": []}), 404, "nope"
    )
    with (
        grpc.insecure_channel(digits_server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            pb.ModelInferRequest(model_name="nope"), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_body_over_the_limit_is_refused_from_its_content_length(
    digits_server: PredictorProcess,
) -> None:
    """Only headers are sent: the 413 comes before any body byte is read."""
    announced = 40 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", digits_server.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {announced}\r\n\r\n".encode()
        )
        reply = b""
        while b"}" not in reply:  # the JSON body ends with a brace
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"exceeds the limit" in reply


def test_image_over_the_pixel_limit_is_refused_from_its_header(
    digits_server: PredictorProcess,
) -> None:
    huge = encode(Image.new("L", (8000, 6000)), "PNG")  # 48 MP, a few KB compressed
    assert_error(v1_raw(digits_server, huge), 413, "48000000 pixels")
    phone = encode(Image.new("RGB", (4032, 3024), (40, 40, 40)), "JPEG", quality=80)  # 12 MP passes
    assert v1_raw(digits_server, phone).status_code == 200


# -- bursts ------------------------------------------------------------------------------------


def variants(count: int) -> list[tuple[int, bytes]]:
    """Distinct images of known digits: the samples shifted by up to 2 pixels."""
    out = []
    shifts = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    for i in range(count):
        digit = i % 10
        dx, dy = shifts[(i // 10) % len(shifts)]
        pixels = np.asarray(Image.open(io.BytesIO(SAMPLES[digit])))
        shifted = np.roll(np.roll(pixels, dx, axis=1), dy, axis=0)
        out.append((digit, encode(Image.fromarray(shifted), "PNG")))
    return out


async def burst(server: PredictorProcess, bodies: Sequence[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{server.url}/v1/models/digits:predict",
                    content=body,
                    headers={"content-type": "image/png"},
                )
                for body in bodies
            )
        )


def test_64_way_burst_is_batched_and_matches_one_at_a_time(digits_server: PredictorProcess) -> None:
    images = variants(64)
    sequential = [v1_top(v1_raw(digits_server, png)) for _, png in images]
    before = digits_server.metrics()
    responses = asyncio.run(burst(digits_server, [png for _, png in images]))
    after = digits_server.metrics()
    for response, expected in zip(responses, sequential, strict=True):
        assert_same_top(v1_top(response), expected, atol=1e-4)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model="digits", **labels) - metric(
            before, name, model="digits", **labels
        )

    batches = delta("predictor_batch_size_count")
    assert delta("predictor_batch_size_sum") == 64
    assert batches < 64  # some batches held more than one image
    assert delta("predictor_batch_size_bucket", le="1.0") < batches
    print(f"\n64-way burst: {batches:.0f} batches, mean batch size {64 / batches:.1f}")
    hist = {
        le: delta("predictor_batch_size_bucket", le=le)
        for le in ("1.0", "2.0", "4.0", "8.0", "16.0", "32.0")
    }
    print("cumulative batch-size buckets:", hist)


def test_bad_image_in_a_burst_fails_only_its_own_request(digits_server: PredictorProcess) -> None:
    images = [png for _, png in variants(32)]
    bad_index = 17
    images[bad_index] = images[bad_index][:40]  # truncated PNG
    responses = asyncio.run(burst(digits_server, images))
    codes = [r.status_code for r in responses]
    assert codes[bad_index] == 400
    assert codes[:bad_index] + codes[bad_index + 1 :] == [200] * 31


def test_full_queue_answers_503_with_retry_after(
    start_server: StartServer, model_folder: Any
) -> None:
    server = start_server(
        [
            "--model-dir",
            str(model_folder),
            "--queue-capacity",
            "4",
            "--max-batch-size",
            "2",
            "--max-batch-delay-ms",
            "1",
        ],
        ["slow"],
        test_archs=True,
    )
    image = encode(Image.new("RGB", (16, 16), (200, 200, 200)), "PNG")
    body = {"instances": [b64(image)] * 3}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            url = f"{server.url}/v1/models/slow:predict"
            return await asyncio.gather(*(client.post(url, json=body) for _ in range(12)))

    responses = asyncio.run(flood())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}
    assert codes.count(200) >= 1
    assert codes.count(503) >= 1
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "queue full" in refused.json()["error"]
    rejected = metric(
        server.metrics(), "predictor_rejected_total", model="slow", reason="queue_full"
    )
    assert rejected == codes.count(503)

"""Clients nobody here wrote, unchanged, against the real server.

tritonclient (HTTP with the binary tensor extension both ways, and gRPC), KServe's own
``InferenceRESTClient`` (binary BYTES), ``curl -F`` multipart uploads, versioned v2 URLs,
and the error shape of routes and methods that are not served.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import DIGITS, PredictorProcess, digit_samples

SAMPLES = digit_samples()


def json_top(server: PredictorProcess, images: list[bytes], top_k: int = 3) -> list[list[str]]:
    """Top-k labels per image through the v2 JSON route: the reference answer."""
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ],
        "parameters": {"top_k": top_k},
    }
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    labels = {o["name"]: o for o in response.json()["outputs"]}["labels"]
    n, k = labels["shape"]
    return [labels["data"][i * k : (i + 1) * k] for i in range(n)]


# -- tritonclient.http -----------------------------------------------------------------------


def test_tritonclient_http_binary_bytes_in_and_out(digits_server: PredictorProcess) -> None:
    import tritonclient.http as httpclient

    images = [SAMPLES[3], SAMPLES[7], SAMPLES[0]]
    client = httpclient.InferenceServerClient(digits_server.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert client.is_model_ready("digits", "1")
        assert client.get_model_metadata("digits")["versions"] == ["1"]
        assert client.get_model_config("digits")["max_batch_size"] >= 1

        image = httpclient.InferInput("image", [len(images)], "BYTES")
        image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput("labels", binary_data=True),
            httpclient.InferRequestedOutput("scores", binary_data=True),
            httpclient.InferRequestedOutput("class_ids", binary_data=False),
        ]
        result = client.infer("digits", [image], outputs=outputs, parameters={"top_k": 3})
        labels = [[v.decode() for v in row] for row in result.as_numpy("labels")]
        assert labels == json_top(digits_server, images)
        assert [row[0] for row in labels] == ["3", "7", "0"]
        scores = result.as_numpy("scores")
        assert scores.dtype == np.float32
        assert scores.shape == (3, 3)
        assert result.as_numpy("class_ids")[:, 0].tolist() == [3, 7, 0]

        # No outputs named: tritonclient asks for every output in binary.
        default = client.infer("digits", [image], model_version="1")
        assert [row[0].decode() for row in default.as_numpy("labels")] == ["3", "7", "0"]
    finally:
        client.close()


def test_tritonclient_http_fp32_tensor_in_binary(digits_server: PredictorProcess) -> None:
    import io

    import tritonclient.http as httpclient
    from PIL import Image

    metadata = httpx.get(f"{digits_server.url}/v2/models/digits", timeout=30).json()
    params = next(t for t in metadata["inputs"] if t["name"] == "tensor")["parameters"]
    pixels = np.asarray(Image.open(io.BytesIO(SAMPLES[9])).convert("L"), dtype=np.float32)
    tensor = ((pixels / 255.0 - params["mean"][0]) / params["std"][0])[None, None]
    client = httpclient.InferenceServerClient(digits_server.url.removeprefix("http://"))
    try:
        data = httpclient.InferInput("tensor", list(tensor.shape), "FP32")
        data.set_data_from_numpy(tensor.astype(np.float32), binary_data=True)
        result = client.infer("digits", [data])
        assert result.as_numpy("labels")[0][0].decode() == "9"
    finally:
        client.close()


# -- KServe's own client -------------------------------------------------------------------------


def test_kserve_rest_client_binary_bytes(digits_server: PredictorProcess) -> None:
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    async def call() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        image = InferInput("image", [2], "BYTES")
        image.set_data_from_numpy(
            np.array([SAMPLES[5], SAMPLES[2]], dtype=np.object_), binary_data=True
        )
        request = InferRequest(
            "digits",
            [image],
            parameters={"top_k": 2},
            request_outputs=[RequestedOutput("labels", {"binary_data": True})],
        )
        try:
            return await client.infer(digits_server.url, request, model_name="digits")
        finally:
            await client._client.aclose()

    response = asyncio.run(call())
    labels = response.get_output_by_name("labels").as_numpy()
    assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in labels] == json_top(
        digits_server, [SAMPLES[5], SAMPLES[2]], 2
    )
    assert [o.name for o in response.outputs] == ["labels"]


# -- tritonclient.grpc (a subprocess: its protobufs clash with KServe's in one process) -----------

TRITON_GRPC_INFER = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

target, *paths = sys.argv[1:]
client = grpcclient.InferenceServerClient(target)
images = np.array([open(p, "rb").read() for p in paths], dtype=np.object_)
image = grpcclient.InferInput("image", [len(paths)], "BYTES")
image.set_data_from_numpy(images)
result = client.infer("digits", [image], parameters={"top_k": 3})
metadata = client.get_model_metadata("digits")
print(json.dumps({
    "labels": [[v.decode() for v in row] for row in result.as_numpy("labels")],
    "scores_dtype": str(result.as_numpy("scores").dtype),
    "live": client.is_server_live(),
    "ready": client.is_model_ready("digits", "1"),
    "versions": list(metadata.versions),
    "inputs": [t.name for t in metadata.inputs],
}))
"""


def test_tritonclient_grpc(digits_server: PredictorProcess) -> None:
    paths = [str(DIGITS / "samples" / f"digit-{d}.png") for d in (4, 1)]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(TRITON_GRPC_INFER),
            digits_server.grpc_target,
            *paths,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["labels"] == json_top(digits_server, [SAMPLES[4], SAMPLES[1]])
    assert out["scores_dtype"] == "float32"
    assert (out["live"], out["ready"], out["versions"]) == (True, True, ["1"])
    assert out["inputs"] == ["image", "tensor"]


# -- multipart uploads -----------------------------------------------------------------------


def curl(*args: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_multipart_upload(digits_server: PredictorProcess) -> None:
    url = f"{digits_server.url}/v1/models/digits:predict"
    sample = DIGITS / "samples"
    raw = httpx.post(url, content=SAMPLES[3], headers={"content-type": "image/png"}, timeout=30)
    code, body = curl("-F", f"image=@{sample / 'digit-3.png'}", url)
    assert code == 200
    assert body == raw.json()

    code, body = curl(
        "-F",
        f"a=@{sample / 'digit-8.png'}",
        "-F",
        f"b=@{sample / 'digit-2.png'}",
        "-F",
        "top_k=1",
        url,
    )
    assert code == 200
    assert [[p["label"] for p in row] for row in body["predictions"]] == [["8"], ["2"]]

    notes = digits_server.log_path.parent / "notes.txt"
    notes.write_text("not an image at all")
    code, body = curl("-F", f"image=@{sample / 'digit-3.png'}", "-F", f"notes=@{notes}", url)
    assert code == 400
    assert body["error"].startswith("part 'notes' (notes.txt): ")

    code, body = curl("-F", "top_k=2", url)
    assert code == 400
    assert "no image part" in body["error"]


def test_multipart_limits_and_framing(digits_server: PredictorProcess) -> None:
    url = f"{digits_server.url}/v1/models/digits:predict"
    broken = httpx.post(
        url,
        content=b"--xyz\r\nContent-Disposition: form-data; name=image\r\n\r\nabc",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
        timeout=30,
    )
    assert broken.status_code == 400
    assert "closing boundary" in broken.json()["error"]
    no_boundary = httpx.post(
        url, content=b"abc", headers={"content-type": "multipart/form-data"}, timeout=30
    )
    assert no_boundary.status_code == 400
    huge = httpx.post(
        url,
        files={"image": ("big.png", _declared_png(50_000, 50_000), "image/png")},
        timeout=30,
    )
    assert huge.status_code == 413
    assert "part 'image' (big.png)" in huge.json()["error"]


def _declared_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# -- versioned URLs, unknown routes and methods ----------------------------------------------------


def test_versioned_v2_urls(digits_server: PredictorProcess) -> None:
    base = f"{digits_server.url}/v2/models/digits"
    offset = len(digits_server.log())
    assert httpx.get(f"{base}/versions/1", timeout=30).json()["versions"] == ["1"]
    assert httpx.get(f"{base}/versions/1/ready", timeout=30).json() == {
        "name": "digits",
        "ready": True,
    }
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(SAMPLES[6]).decode()],
            }
        ]
    }
    answer = httpx.post(f"{base}/versions/1/infer", json=body, timeout=30)
    assert answer.status_code == 200
    assert answer.json()["model_version"] == "1"
    for url in (f"{base}/versions/999", f"{base}/versions/999/ready"):
        missing = httpx.get(url, timeout=30)
        assert missing.status_code == 404
        assert missing.json() == {"error": "model digits has no version '999'; it serves version 1"}
    assert httpx.post(f"{base}/versions/2/infer", json=body, timeout=30).status_code == 404
    assert "Traceback" not in digits_server.log()[offset:]


def test_unknown_routes_and_methods_answer_in_the_error_shape(
    digits_server: PredictorProcess,
) -> None:
    url = digits_server.url
    for method, path, status in (
        ("GET", "/nope", 404),
        ("POST", "/v1/models/digits:explain", 404),
        ("GET", "/v2/models/digits/stats", 404),
        ("DELETE", "/v2/models/digits", 405),
        ("PUT", "/v1/models/digits:predict", 405),
        ("GET", "/v2/models/digits/infer", 405),
    ):
        response = httpx.request(method, f"{url}{path}", timeout=30)
        assert response.status_code == status, (method, path, response.text)
        assert list(response.json()) == ["error"], (method, path)
        if status == 405:
            assert response.headers["allow"], (method, path)
    assert httpx.get(f"{url}/v2/models/digits/infer").headers["allow"] == "POST"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v2",
        "/v2/health/live",
        "/v2/models/digits",
        "/v2/models/digits/ready",
        "/metrics",
        "/docs",
    ],
)
def test_head_works_on_get_routes(digits_server: PredictorProcess, path: str) -> None:
    head = httpx.head(f"{digits_server.url}{path}", timeout=30)
    get = httpx.get(f"{digits_server.url}{path}", timeout=30)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]

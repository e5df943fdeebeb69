"""Model management on a live server: the repository API over REST and gRPC, guarded.

One server runs with ``--model-control explicit`` and a bearer token over a folder of
models (two copies of the digits demo and a slow test model); tests load, reload, unload
and reconfigure them, race those operations, and cycle a model while another serves.
The default (``--model-control none``) is checked on the shared demo server: every
repository route and RPC is absent there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from tests.conftest import StartServer
from tests.fixtures.test_archs import write_model
from tests.support import (
    DIGITS,
    ROOT,
    PredictorProcess,
    console_examples,
    digit_samples,
    metric,
    same_output,
)

TOKEN = "repo-s3cret"  # noqa: S105 - a test token
AUTH = {"authorization": f"Bearer {TOKEN}"}
SAMPLES = digit_samples()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    ignore = shutil.ignore_patterns("samples", "*.py")
    shutil.copytree(DIGITS, root / "digits", ignore=ignore)
    shutil.copytree(DIGITS, root / "digits-b", ignore=ignore)
    write_model(root / "slow", "slow_net", delay_ms=300)
    return root


@pytest.fixture(scope="module")
def server(
    start_server: StartServer, folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> PredictorProcess:
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN)
    args = [
        "--model-dir",
        str(folder),
        "--model-control",
        "explicit",
        "--load-models",
        "digits,slow",
        "--auth-token-file",
        str(token),
        "--max-batch-size",
        "8",
        "--drain-timeout-s",
        "10",
        "--docs",
        "false",
    ]
    return start_server(args, ["digits", "slow"], test_archs=True)


def api(server: PredictorProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", json=body, headers=AUTH, timeout=120)


def classify(server: PredictorProcess, model: str, digit: int = 3) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{model}:predict",
        content=SAMPLES[digit],
        headers={"content-type": "image/png", **AUTH},
        timeout=60,
    )


def index(server: PredictorProcess) -> dict[str, dict[str, str]]:
    response = api(server, "POST", "/v2/repository/index")
    assert response.status_code == 200, response.text
    return {entry["name"]: entry for entry in response.json()}


def ensure_unloaded(server: PredictorProcess, name: str) -> None:
    assert api(server, "POST", f"/v2/repository/models/{name}/unload").status_code == 200


# -- model control none (the default) ------------------------------------------------------------


REPOSITORY_ROUTES = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/digits/load"),
    ("POST", "/v2/repository/models/digits/unload"),
    ("POST", "/v2/repository/models/no-such-model/unload"),
    ("GET", "/v2/repository/index"),
    ("GET", "/v2/repository/models/digits/unload"),
]


@pytest.mark.parametrize(("method", "path"), REPOSITORY_ROUTES)
def test_repository_routes_are_not_served_by_default(
    digits_server: PredictorProcess, method: str, path: str
) -> None:
    response = httpx.request(method, f"{digits_server.url}{path}", timeout=30)
    assert response.status_code == 404, response.text
    assert list(response.json()) == ["error"]
    # ...and the model is still there, answering
    assert httpx.get(f"{digits_server.url}/v2/models/digits/ready").status_code == 200


def test_repository_rpcs_are_unimplemented_by_default(digits_server: PredictorProcess) -> None:
    with grpc.insecure_channel(digits_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="digits")),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="digits")),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10).ready


def test_config_cannot_be_patched_by_default(digits_server: PredictorProcess) -> None:
    url = f"{digits_server.url}/v2/models/digits/config"
    response = httpx.patch(url, json={"top_k": 9}, timeout=30)
    assert response.status_code == 405
    assert "--model-control explicit" in response.json()["error"]
    assert httpx.get(url, timeout=30).json()["defaults"] == {"top_k": 3}


# -- explicit model control --------------------------------------------------------------------


def test_the_operations_guide_examples(server: PredictorProcess) -> None:
    """docs/operations.md's model-management session, run as written (first, on a fresh
    server: its outputs show the state at start)."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("## Managing models at runtime", 1)[1].split("\n## ", 1)[0]
    examples = console_examples(section)
    assert len(examples) >= 5
    try:
        _run_examples(server, examples)
    finally:
        ensure_unloaded(server, "digits-b")  # whatever happened, later tests start clean


def _run_examples(server: PredictorProcess, examples: list[tuple[str, list[str]]]) -> None:
    for command, expected in examples:
        local = command.replace("localhost:8080", f"127.0.0.1:{server.http_port}")
        result = subprocess.run(
            ["bash", "-c", local],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            env={**os.environ, "TOKEN": TOKEN},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == len(expected), (command, result.stdout)
        for actual, wanted in zip(lines, expected, strict=True):
            assert same_output(actual, wanted), (
                f"\n{command}\nactual:   {actual}\nexpected: {wanted}"
            )


def test_repository_routes_need_the_token(server: PredictorProcess) -> None:
    for method, path in (
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/digits-b/load"),
        ("POST", "/v2/repository/models/digits/unload"),
        ("PATCH", "/v2/models/digits/config"),
        ("GET", "/v2/models/digits/config"),
        ("GET", "/v2/models/digits/labels"),
    ):
        response = httpx.request(method, f"{server.url}{path}", json={"top_k": 1}, timeout=30)
        assert response.status_code == 401, (method, path, response.text)
    assert classify(server, "digits").status_code == 200  # nothing was unloaded
    assert index(server)["digits-b"]["state"] == "UNAVAILABLE"  # ...or loaded


def test_docs_false_removes_the_page_and_the_document(server: PredictorProcess) -> None:
    for path in ("/docs", "/openapi.json", "/docs/swagger-ui.css"):
        assert api(server, "GET", path).status_code == 404, path


def test_index_lists_every_directory(server: PredictorProcess) -> None:
    entries = index(server)
    assert set(entries) == {"digits", "digits-b", "slow"}
    assert entries["digits"] == {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    assert entries["digits-b"]["state"] == "UNAVAILABLE"
    ready = api(server, "POST", "/v2/repository/index", {"ready": True}).json()
    assert {entry["name"] for entry in ready} == {"digits", "slow"}


def test_load_serves_and_unload_frees(server: PredictorProcess) -> None:
    assert classify(server, "digits-b").status_code == 404
    loaded = api(server, "POST", "/v2/repository/models/digits-b/load")
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"name": "digits-b", "load": True}
    answer = classify(server, "digits-b", 7)
    assert answer.status_code == 200
    assert answer.json()["predictions"][0][0]["label"] == "7"
    assert 'model="digits-b"' in httpx.get(f"{server.url}/metrics").text

    unloaded = api(server, "POST", "/v2/repository/models/digits-b/unload")
    assert unloaded.json() == {"name": "digits-b", "unload": True}
    gone = classify(server, "digits-b")
    assert gone.status_code == 404
    assert "unloaded" in gone.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/digits-b/ready").status_code == 404
    assert index(server)["digits-b"] == {
        "name": "digits-b",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    }
    info = [
        line
        for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line.startswith("predictor_model_info")
    ]
    assert not any('model="digits-b"' in line for line in info)
    assert classify(server, "digits").status_code == 200  # the other model never noticed
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_unknown_and_broken_models(server: PredictorProcess, folder: Path) -> None:
    missing = api(server, "POST", "/v2/repository/models/no-such-model/load")
    assert missing.status_code == 404
    assert api(server, "POST", "/v2/repository/models/no-such-model/unload").status_code == 404

    broken = folder / "broken"
    broken.mkdir()
    (broken / "model.json").write_text(json.dumps({"arch": "resnet18", "weights": "w.pt"}))
    try:
        entry = index(server)["broken"]
        assert entry["state"] == "UNAVAILABLE"
        assert "input" in entry["reason"]
        response = api(server, "POST", "/v2/repository/models/broken/load")
        assert response.status_code == 400
        assert "model.json" in response.json()["error"]
    finally:
        shutil.rmtree(broken)
    assert "broken" not in index(server)


def test_a_directory_copied_in_after_start_can_be_loaded(
    server: PredictorProcess, folder: Path
) -> None:
    shutil.copytree(folder / "digits", folder / "late")
    try:
        assert index(server)["late"]["state"] == "UNAVAILABLE"
        assert api(server, "POST", "/v2/repository/models/late/load").status_code == 200
        assert classify(server, "late", 5).json()["predictions"][0][0]["label"] == "5"
        ensure_unloaded(server, "late")
    finally:
        shutil.rmtree(folder / "late")


def test_load_with_a_config_override(server: PredictorProcess) -> None:
    config = {"max_batch_size": 4, "max_batch_delay_ms": 2, "tune_batch_size": False, "top_k": 2}
    body = {"parameters": {"config": json.dumps(config)}}
    assert api(server, "POST", "/v2/repository/models/digits-b/load", body).status_code == 200
    document = api(server, "GET", "/v2/models/digits-b/config").json()
    assert document["batching"]["configured_max_batch_size"] == 4
    assert document["batching"]["batch_size"] == 4
    assert document["max_batch_size"] == 4  # Triton's field
    assert document["batching"]["max_batch_delay_ms"] == 2
    assert document["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    assert document["defaults"] == {"top_k": 2}
    assert len(classify(server, "digits-b").json()["predictions"][0]) == 2

    triton = {"dynamic_batching": {"max_queue_delay_microseconds": 500}}
    body = {"parameters": {"config": json.dumps(triton)}}
    assert api(server, "POST", "/v2/repository/models/digits-b/load", body).status_code == 200
    document = api(server, "GET", "/v2/models/digits-b/config").json()
    assert document["batching"]["max_batch_delay_ms"] == 0.5
    assert document["batching"]["configured_max_batch_size"] == 8  # back to the server's
    ensure_unloaded(server, "digits-b")


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ('{"max_batch_size": 0}', "max_batch_size"),
        ('{"max_batch_size": 64, "queue_capacity": 8}', "queue_capacity"),
        ('{"dtype": "float8"}', "dtype"),
        ('{"devices": ["tpu"]}', "devices"),
        ('{"bogus": 1}', "bogus"),
        ('{"max_batch_delay_ms": "fast"}', "max_batch_delay_ms"),
        ("not json", "JSON"),
        ("[1, 2]", "object"),
    ],
)
def test_invalid_config_overrides_are_400(
    server: PredictorProcess, config: str, named: str
) -> None:
    body = {"parameters": {"config": config}}
    response = api(server, "POST", "/v2/repository/models/digits-b/load", body)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]
    assert index(server)["digits-b"]["state"] == "UNAVAILABLE"


def test_patch_changes_the_defaults_for_the_next_request(server: PredictorProcess) -> None:
    try:
        patched = api(server, "PATCH", "/v2/models/digits/config", {"top_k": 5})
        assert patched.status_code == 200, patched.text
        assert patched.json()["defaults"] == {"top_k": 5}
        assert len(classify(server, "digits").json()["predictions"][0]) == 5
        bad_bodies: list[Any] = [{"top_k": 0}, {"top_k": "many"}, {"score_threshold": 0.5}, [], {}]
        for bad in bad_bodies:
            assert api(server, "PATCH", "/v2/models/digits/config", bad).status_code == 400, bad
        assert len(classify(server, "digits").json()["predictions"][0]) == 5
    finally:
        api(server, "PATCH", "/v2/models/digits/config", {"top_k": 3})
    assert len(classify(server, "digits").json()["predictions"][0]) == 3


def test_labels_and_config(server: PredictorProcess) -> None:
    labels = api(server, "GET", "/v2/models/digits/labels").json()
    assert labels == {"labels": [str(d) for d in range(10)]}
    config = api(server, "GET", "/v2/models/digits/config").json()
    assert config["task"] == "classification"
    assert config["preprocessing"]["color"] == "L"
    assert config["preprocessing"]["mean"] == [0.25]
    assert config["devices"] == ["cpu"]
    assert config["input"][0] == {"name": "image", "data_type": "TYPE_STRING", "dims": [1]}
    assert config["instance_group"] == [{"kind": "KIND_CPU", "count": 1}]
    assert api(server, "GET", "/v2/models/digits-b/config").status_code == 404


def test_concurrent_loads_end_with_one_ready_model(server: PredictorProcess) -> None:
    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            path = "/v2/repository/models/digits-b/load"
            replies = await asyncio.gather(client.post(path), client.post(path), client.post(path))
            return [r.status_code for r in replies]

    assert asyncio.run(race()) == [200, 200, 200]
    assert index(server)["digits-b"]["state"] == "READY"
    assert classify(server, "digits-b").status_code == 200
    ensure_unloaded(server, "digits-b")


def test_unload_during_a_load_waits_and_unloads(server: PredictorProcess) -> None:
    async def race() -> tuple[int, int]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            load = asyncio.create_task(client.post("/v2/repository/models/digits-b/load"))
            await asyncio.sleep(0.2)
            unload = await client.post("/v2/repository/models/digits-b/unload")
            return (await load).status_code, unload.status_code

    assert asyncio.run(race()) == (200, 200)
    assert index(server)["digits-b"]["state"] == "UNAVAILABLE"
    assert classify(server, "digits-b").status_code == 404


def test_unload_finishes_the_requests_in_flight(server: PredictorProcess) -> None:
    async def race() -> tuple[list[int], int, float, int]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            started = time.monotonic()
            inflight = [asyncio.create_task(send_slow(client)) for _ in range(6)]
            await asyncio.sleep(0.15)  # admitted, queued behind a 300 ms batch
            unload = await client.post("/v2/repository/models/slow/unload")
            took = time.monotonic() - started
            after = await send_slow(client)
            return (
                [r.status_code for r in await asyncio.gather(*inflight)],
                unload.status_code,
                took,
                after.status_code,
            )

    async def send_slow(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            "/v1/models/slow:predict", content=SAMPLES[1], headers={"content-type": "image/png"}
        )

    try:
        codes, unloaded, took, after = asyncio.run(race())
        assert codes == [200] * 6
        assert unloaded == 200
        assert took >= 0.3  # the unload waited for the batches
        assert after == 404
    finally:
        assert api(server, "POST", "/v2/repository/models/slow/load").status_code == 200


def test_reload_keeps_serving(server: PredictorProcess) -> None:
    """A load of a loaded model swaps a new version in; requests meanwhile all succeed."""

    async def run() -> Counter[int]:
        codes: Counter[int] = Counter()
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            reload = asyncio.create_task(client.post("/v2/repository/models/digits/load"))
            while not reload.done():
                reply = await client.post(
                    "/v1/models/digits:predict",
                    content=SAMPLES[2],
                    headers={"content-type": "image/png"},
                )
                codes[reply.status_code] += 1
            assert (await reload).status_code == 200
        return codes

    codes = asyncio.run(run())
    assert set(codes) == {200}, codes
    assert codes[200] > 3


def test_grpc_repository_rpcs(server: PredictorProcess) -> None:
    metadata = tuple(AUTH.items())
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="digits-b"), timeout=120
            )
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="digits-b"), timeout=120, metadata=metadata
        )
        assert (reply.model_name, reply.isLoaded) == ("digits-b", True)
        ready = stub.ModelReady(pb.ModelReadyRequest(name="digits-b"), timeout=10)
        assert ready.ready
        reply = stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="digits-b"), timeout=120, metadata=metadata
        )
        assert (reply.model_name, reply.isUnloaded) == ("digits-b", True)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelReady(pb.ModelReadyRequest(name="digits-b"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as raised:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="no-such-model"),
                timeout=60,
                metadata=metadata,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

target, token, image_path = sys.argv[1:4]
headers = {"authorization": "Bearer " + token}
client = grpcclient.InferenceServerClient(target)
out = {}
def index():
    models = client.get_model_repository_index(headers=headers).models
    return [{"name": m.name, "state": m.state} for m in models]
out["index_before"] = index()
client.load_model("digits-b", config='{"max_batch_size": 4}', headers=headers)
out["ready"] = client.is_model_ready("digits-b", headers=headers)
image = np.array([open(image_path, "rb").read()], dtype=np.object_)
inputs = [grpcclient.InferInput("image", [1], "BYTES")]
inputs[0].set_data_from_numpy(image)
result = client.infer("digits-b", inputs, headers=headers)
out["labels"] = [v.decode() for v in result.as_numpy("labels").reshape(-1)]
out["metadata_versions"] = list(client.get_model_metadata("digits-b", headers=headers).versions)
client.unload_model("digits-b", headers=headers)
out["ready_after"] = client.is_model_ready("digits", headers=headers)
out["index_after"] = index()
print(json.dumps(out))
"""


def test_tritonclient_grpc_manages_the_repository(server: PredictorProcess) -> None:
    """tritonclient.grpc's own messages (Triton's field numbers) load, infer and unload.

    Runs in a subprocess: tritonclient's and KServe's protobuf modules both define the
    ``inference`` package and cannot be imported into one process.
    """
    image = DIGITS / "samples" / "digit-6.png"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRITON_GRPC), server.grpc_target, TOKEN, str(image)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    before = {entry["name"]: entry["state"] for entry in out["index_before"]}
    assert before["digits-b"] == "UNAVAILABLE"
    assert before["digits"] == "READY"
    assert out["ready"] is True
    assert out["labels"][0] == "6"
    assert out["metadata_versions"] == ["1"]
    assert out["ready_after"] is True
    after = {entry["name"]: entry["state"] for entry in out["index_after"]}
    assert after["digits-b"] == "UNAVAILABLE"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def test_load_unload_cycles_under_traffic_lose_nothing(server: PredictorProcess) -> None:
    """20 load/unload cycles of one model while a client hammers another.

    Every request to the hammered model answers 200; the cycled model answers 200, or 404 /
    503 while it is not loaded; nothing is a 500 or hangs. Resident memory returns to
    within 10% of where it started. Prints the hammered model's p99 while idle and during
    loads (a figure for the notes, not a pass/fail threshold).
    """
    cycles = 20

    def rss() -> float:
        return metric(server.metrics(), "process_resident_memory_bytes")

    async def run() -> tuple[Counter[int], Counter[int], dict[str, list[float]], list[float]]:
        hammered: Counter[int] = Counter()
        cycled: Counter[int] = Counter()
        latency: dict[str, list[float]] = {"idle": [], "load": [], "unload": [], "between": []}
        loads: list[float] = []
        phase = "idle"
        done = asyncio.Event()

        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as client:

            async def hammer() -> None:
                while not done.is_set():
                    started, during = time.perf_counter(), phase
                    reply = await client.post(
                        "/v1/models/digits:predict",
                        content=SAMPLES[8],
                        headers={"content-type": "image/png"},
                    )
                    hammered[reply.status_code] += 1
                    latency[during if during == phase else "between"].append(
                        time.perf_counter() - started
                    )

            async def poke() -> None:
                while not done.is_set():
                    reply = await client.post(
                        "/v1/models/digits-b:predict",
                        content=SAMPLES[4],
                        headers={"content-type": "image/png"},
                    )
                    cycled[reply.status_code] += 1
                    await asyncio.sleep(0.01)

            workers = [asyncio.create_task(hammer()) for _ in range(4)]
            poker = asyncio.create_task(poke())
            await asyncio.sleep(3.0)  # latency with nothing else going on, first
            for _ in range(cycles):
                phase = "load"
                started = time.perf_counter()
                load = await client.post("/v2/repository/models/digits-b/load")
                loads.append(time.perf_counter() - started)
                assert load.status_code == 200, load.text
                phase = "between"
                await asyncio.sleep(0.2)
                phase = "unload"
                unload = await client.post("/v2/repository/models/digits-b/unload")
                assert unload.status_code == 200, unload.text
                phase = "between"
            done.set()
            await asyncio.gather(*workers, poker)
        return hammered, cycled, latency, loads

    before = rss()
    hammered, cycled, latency, loads = asyncio.run(run())
    time.sleep(1.0)
    after = rss()
    p99 = ", ".join(
        f"{phase} {_percentile(values, 50) * 1000:.1f}/{_percentile(values, 99) * 1000:.1f} ms"
        for phase, values in latency.items()
        if phase != "between"
    )
    print(
        f"\n{cycles} load/unload cycles: hammered {dict(hammered)}, cycled {dict(cycled)}; "
        f"hammered p50/p99 {p99}; load {np.median(loads):.2f} s (median); "
        f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB ({after / before - 1:+.1%})"
    )
    assert set(hammered) == {200}, hammered
    assert set(cycled) <= {200, 404, 503}, cycled
    assert cycled[200] > 0
    assert after <= before * 1.10

"""Reliability on a live server: deadlines, cancellation, drain, fault isolation, overload, auth.

Test-only models (tests/fixtures/test_archs.py) make the engine slow or failing on cue, so
every scenario is decided by the server's behaviour, not by the speed of this machine.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from PIL import Image

from tests.conftest import StartServer
from tests.fixtures.test_archs import POISON_PIXEL, write_model
from tests.support import DIGITS, PredictorProcess, encode, metric, parse_metrics, photo

GREY = encode(Image.new("RGB", (16, 16), (120, 120, 120)), "PNG")
POISON = encode(Image.new("RGB", (16, 16), (POISON_PIXEL,) * 3), "PNG")


def post(
    server: PredictorProcess, model: str, body: bytes = GREY, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{model}:predict",
        content=body,
        headers={"content-type": "image/png", **headers},
        timeout=30,
    )


async def send(
    client: httpx.AsyncClient, server: PredictorProcess, model: str, body: bytes, **headers: str
) -> httpx.Response:
    return await client.post(
        f"{server.url}/v1/models/{model}:predict",
        content=body,
        headers={"content-type": "image/png", **headers},
    )


async def started_items(
    client: httpx.AsyncClient, server: PredictorProcess, model: str, count: float
) -> None:
    """Wait (up to 30 s) until ``count`` images have started on the engine, by /metrics."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (await client.get(f"{server.url}/metrics")).text
        if metric(parse_metrics(text), "predictor_batch_size_sum", model=model) >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{count} images never started on {model}")


def items_run(server: PredictorProcess, model: str) -> float:
    """Images the engine has run (the batch-size histogram's sum)."""
    return metric(server.metrics(), "predictor_batch_size_sum", model=model)


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reliability-models")
    write_model(folder / "slow", "slow_net", delay_ms=300)
    write_model(folder / "poison", "poison_net", delay_ms=30)
    return folder


@pytest.fixture(scope="module")
def slow_server(start_server: StartServer, slow_folder: Path) -> PredictorProcess:
    return start_server(
        ["--model-dir", str(slow_folder), "--max-batch-size", "4", "--max-batch-delay-ms", "30"],
        ["slow", "poison"],
        test_archs=True,
    )


# -- deadlines and cancellation ----------------------------------------------------------------


def test_expired_requests_get_504_and_never_reach_the_engine(slow_server: PredictorProcess) -> None:
    before_run = items_run(slow_server, "slow")
    before_timeouts = metric(
        slow_server.metrics(), "predictor_rejected_total", model="slow", reason="timeout"
    )

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            occupy = [
                asyncio.create_task(send(client, slow_server, "slow", GREY)) for _ in range(4)
            ]
            # Every occupying image has started on the (300 ms) engine, however it was batched.
            await started_items(client, slow_server, "slow", before_run + 4)
            late = [
                send(client, slow_server, "slow", GREY, **{"x-request-timeout-ms": "100"})
                for _ in range(3)
            ]
            v2_body = {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(GREY).decode()],
                    }
                ],
                "parameters": {"timeout_ms": 100},
            }
            late_v2 = client.post(f"{slow_server.url}/v2/models/slow/infer", json=v2_body)
            return list(await asyncio.gather(*occupy, *late, late_v2))

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 4 + [504] * 4
    assert all("deadline passed" in r.json()["error"] for r in responses[4:])
    assert items_run(slow_server, "slow") - before_run == 4  # the expired images never ran
    after_timeouts = metric(
        slow_server.metrics(), "predictor_rejected_total", model="slow", reason="timeout"
    )
    assert after_timeouts - before_timeouts == 4


def test_grpc_timeout_parameter_gives_deadline_exceeded(slow_server: PredictorProcess) -> None:
    raw = len(GREY).to_bytes(4, "little") + GREY
    request = pb.ModelInferRequest(
        model_name="slow",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[raw],
        parameters={"timeout_ms": pb.InferParameter(int64_param=50)},
    )
    with (
        grpc.insecure_channel(slow_server.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_disconnected_clients_are_cancelled_and_skipped(slow_server: PredictorProcess) -> None:
    before_run = items_run(slow_server, "slow")
    before = metric(
        slow_server.metrics(), "predictor_rejected_total", model="slow", reason="cancelled"
    )

    async def scenario() -> tuple[list[httpx.Response], int]:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            httpx.AsyncClient(timeout=0.15) as impatient,
        ):
            occupy = [
                asyncio.create_task(send(client, slow_server, "slow", GREY)) for _ in range(4)
            ]
            await asyncio.sleep(0.05)
            gave_up = await asyncio.gather(
                *(send(impatient, slow_server, "slow", GREY) for _ in range(3)),
                return_exceptions=True,
            )
            return list(await asyncio.gather(*occupy)), sum(
                isinstance(g, httpx.TimeoutException) for g in gave_up
            )

    done, timed_out = asyncio.run(scenario())
    assert [r.status_code for r in done] == [200] * 4
    assert timed_out == 3
    deadline = time.monotonic() + 10
    while (
        metric(slow_server.metrics(), "predictor_rejected_total", model="slow", reason="cancelled")
        - before
        < 3
    ):
        assert time.monotonic() < deadline, "cancellations were not recorded"
        time.sleep(0.1)
    assert items_run(slow_server, "slow") - before_run == 4  # the abandoned images never ran


# -- fault isolation ---------------------------------------------------------------------------


def test_a_failing_batch_fails_only_its_own_requests(slow_server: PredictorProcess) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            bodies = [GREY] * 5 + [POISON] + [GREY] * 6
            return list(
                await asyncio.gather(*(send(client, slow_server, "poison", b) for b in bodies))
            )

    responses = asyncio.run(burst())
    failed = [r for r in responses if r.status_code != 200]
    assert responses[5].status_code == 500  # the poison image's own request
    assert 1 <= len(failed) <= 4  # only the requests batched with it (max batch 4)
    assert all(r.status_code == 500 for r in failed)
    for response in failed:
        error = response.json()["error"]
        assert error.startswith("inference failed; request id")
        assert "Traceback" not in error
        assert "poison" not in error
    assert post(slow_server, "poison").status_code == 200  # the next batch succeeds
    assert httpx.get(f"{slow_server.url}/v2/models/poison/ready").status_code == 200
    assert slow_server.log().count("RuntimeError: poison image in batch") == 1  # logged once


def test_consecutive_engine_failures_mark_the_model_unhealthy(
    start_server: StartServer, slow_folder: Path
) -> None:
    server = start_server(
        [
            "--model-dir",
            str(slow_folder / "poison"),
            "--max-consecutive-failures",
            "2",
            "--max-batch-delay-ms",
            "0",
        ],
        ["poison"],
        test_archs=True,
    )
    assert post(server, "poison", POISON).status_code == 500
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200  # one failure: still live
    assert post(server, "poison", POISON).status_code == 500
    assert httpx.get(f"{server.url}/v2/models/poison/ready").status_code == 503
    live = httpx.get(f"{server.url}/v2/health/live")
    assert live.status_code == 503
    assert live.json()["live"] is False
    refused = post(server, "poison")
    assert refused.status_code == 503  # not ready: Kubernetes restarts the pod
    assert server.stop() == 0


# -- graceful drain ----------------------------------------------------------------------------


def test_sigterm_during_a_burst_answers_every_admitted_request(
    start_server: StartServer, tmp_path: Path
) -> None:
    write_model(tmp_path / "slow", "slow_net", delay_ms=100)
    server = start_server(
        [
            "--model-dir",
            str(tmp_path),
            "--max-batch-size",
            "8",
            "--max-batch-delay-ms",
            "5",
            "--drain-timeout-s",
            "20",
        ],
        ["slow"],
        test_archs=True,
    )

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, float]:
        limits = httpx.Limits(max_connections=80)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            burst = [asyncio.create_task(send(client, server, "slow", GREY)) for _ in range(64)]
            deadline = time.monotonic() + 20
            while metric(server.metrics(), "predictor_inflight_requests", model="slow") < 64:
                assert time.monotonic() < deadline, "the burst never arrived"
                await asyncio.sleep(0.02)
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            late = await send(client, server, "slow", GREY)  # the listener is still open
            ready = await client.get(f"{server.url}/v2/models/slow/ready")
            return list(await asyncio.gather(*burst)), late, ready, signalled

    responses, late, ready, signalled = asyncio.run(scenario())
    assert Counter(r.status_code for r in responses) == {200: 64}
    assert late.status_code == 503
    assert late.headers["retry-after"] == "1"
    assert "shutting down" in late.json()["error"]
    assert ready.status_code == 503
    code = server.process.wait(30)
    drain_s = time.monotonic() - signalled
    print(f"\ndrain: 64 admitted requests answered, exit {code} {drain_s:.2f} s after SIGTERM")
    assert code == 0
    assert drain_s < 20


# -- overload ----------------------------------------------------------------------------------


def test_sustained_overload_sheds_load_with_flat_memory(
    start_server: StartServer, tmp_path: Path
) -> None:
    """60 s at ~8x capacity: only 200/503/504, RSS growth under 10% after warm-up."""
    write_model(tmp_path / "slow", "slow_net", delay_ms=400, size=64)
    server = start_server(
        [
            "--model-dir",
            str(tmp_path),
            "--max-batch-size",
            "2",
            "--queue-capacity",
            "16",
            "--request-timeout-ms",
            "1500",
        ],
        ["slow"],
        test_archs=True,
    )
    capacity_rps = 2 / 0.4  # 2 images per 400 ms batch
    rate = 8 * capacity_rps
    duration_s, warmup_s = 60.0, 15.0
    body = encode(photo(640, 480), "JPEG", quality=90)

    async def overload() -> tuple[Counter[int], list[tuple[float, float]], int]:
        codes: Counter[int] = Counter()
        rss: list[tuple[float, float]] = []
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            pending: set[asyncio.Task[None]] = set()
            overflow = 0

            async def one() -> None:
                try:
                    response = await client.post(
                        f"{server.url}/v1/models/slow:predict",
                        content=body,
                        headers={"content-type": "image/jpeg"},
                    )
                    codes[response.status_code] += 1
                except httpx.HTTPError:
                    codes[0] += 1

            start = time.monotonic()
            next_sample, sent = start, 0
            while (now := time.monotonic()) - start < duration_s:
                due = int((now - start) * rate)
                while sent < due:
                    if len(pending) >= 1000:
                        overflow += 1
                    else:
                        task = asyncio.create_task(one())
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    sent += 1
                if now >= next_sample:
                    samples = server.metrics()
                    rss.append((now - start, metric(samples, "process_resident_memory_bytes")))
                    next_sample += 2.0
                await asyncio.sleep(0.005)
            await asyncio.gather(*pending)
            return codes, rss, overflow

    codes, rss, overflow = asyncio.run(overload())
    baseline = max(value for t, value in rss if t <= warmup_s)
    peak = max(value for t, value in rss if t > warmup_s)
    growth = peak / baseline - 1
    print(
        f"\noverload at {rate:.0f} req/s (~8x capacity) for {duration_s:.0f} s: {dict(codes)}, "
        f"client-side drops {overflow}; RSS after warm-up {baseline / 2**20:.1f} MiB, "
        f"peak after {peak / 2**20:.1f} MiB ({growth:+.1%})"
    )
    offered = (sum(codes.values()) - codes[0]) / duration_s
    assert offered >= 6 * capacity_rps  # the overload was real, even on a busy machine
    assert set(codes) <= {200, 503, 504}
    assert codes[503] > codes[200]  # most of the load is shed...
    assert codes[200] > 0  # ...while admitted work completes
    assert growth < 0.10
    assert server.stop() == 0


# -- auth --------------------------------------------------------------------------------------


def test_bearer_token_auth(start_server: StartServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret-token\n")
    server = start_server(["--model-dir", str(DIGITS), "--auth-token-file", str(token)], ["digits"])
    png = (DIGITS / "samples" / "digit-4.png").read_bytes()
    assert post(server, "digits", png).status_code == 401
    assert post(server, "digits", png, authorization="Bearer wrong").status_code == 401
    denied = post(server, "digits", png, authorization="Basic czNjcmV0LXRva2Vu")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == "Bearer"
    ok = post(server, "digits", png, authorization="Bearer s3cret-token")
    assert ok.status_code == 200
    assert ok.json()["predictions"][0][0]["label"] == "4"
    assert httpx.get(f"{server.url}/v2/models/digits").status_code == 401  # metadata is protected
    for probe in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready", "/metrics"):
        assert httpx.get(f"{server.url}{probe}").status_code == 200, probe
    rejected = metric(
        server.metrics(), "predictor_rejected_total", model="digits", reason="unauthorized"
    )
    assert rejected == 3

    raw = len(png).to_bytes(4, "little") + png
    request = pb.ModelInferRequest(
        model_name="digits",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[raw],
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply: Any = stub.ModelInfer(
            request, timeout=30, metadata=(("authorization", "Bearer s3cret-token"),)
        )
        assert reply.model_name == "digits"
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10).ready  # probes open

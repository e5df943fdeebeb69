"""Live: a real predictor scraped every second by a real Prometheus, under a short mixed load.

One predictor serves ``digits``, the ``shapes`` demo detector and the test-only ``slow``
model (small queue, so bursts overflow it); one Prometheus on 127.0.0.1 scrapes it plus a
dead target (for the "down" alert) and loads the plain alert rules. After a bounded load
(good requests over v1, v2 and gRPC, detections, bad inputs, an unknown model, queue
overflows) and once Prometheus holds the final counter values, every dashboard query,
every variable query and every alert expression is evaluated through the HTTP API.
``pytest -s`` prints the numbers seen.

``OBS_LOAD_S`` sets the load duration (default 12 s); ``GPU_PREDICTOR_DASHBOARD_PNG=path``
also draws the dashboard there (docs/img/dashboard.png is made that way).
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import shutil
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from PIL import Image

from scripts import dashboard_png, render_alert_rules
from tests.conftest import StartServer
from tests.prometheus_support import (
    PLAIN_RULES,
    Prometheus,
    alerts,
    load_dashboard,
    panel_queries,
    promtool,
    rule_groups,
    substitute,
    uses_gpu_metrics,
    variable_queries,
    wait_for,
)
from tests.support import (
    ROOT,
    PredictorProcess,
    digit_samples,
    encode,
    free_port,
    parse_metrics,
    photo,
)

LOAD_S = float(os.environ.get("OBS_LOAD_S", "12"))
JOB = "gpu-predictor"
NAMESPACE = "obs-test"
POD = "predictor-0"
DEAD_POD = "predictor-gone"
MAX_BATCH = 8
QUEUE = 16
RATE_INTERVAL = "2m"  # covers the whole run: every rate() sees all of the load
# Thresholds that every alert crosses under the test load (the GPU one needs a GPU).
HAIR_TRIGGER = {
    "errorRatio": 0.001,
    "latencyP99Seconds": 0.001,
    "queueFullRatio": 0.001,
    "gpuMemoryUsedRatio": 0.001,
    "tinyBatchMeanSize": 1000,
    "tinyBatchBusyRatio": 0,
}
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
DIGITS_PNG = list(digit_samples().values())
SLOW_PNG = encode(photo(16, 16, seed=3), "PNG")
SHAPES = ROOT / "models" / "shapes"
SHAPES_JPEG = [p.read_bytes() for p in sorted((SHAPES / "samples").glob("*.jpg"))] + [
    encode(Image.new("RGB", (320, 240), (128, 128, 128)), "JPEG")
]
DASHBOARD = load_dashboard()


@dataclass
class Live:
    """What the load left behind, for the tests to query."""

    server: PredictorProcess
    prometheus: Prometheus
    client_codes: Counter[tuple[str, str, int]]  # (model label, protocol, status) as clients saw
    exposition: str  # /metrics after the load
    started: float  # unix time the load began
    ended: float
    gpu: bool  # the predictor exports NVML series

    def variables(self, rate_interval: str = RATE_INTERVAL) -> dict[str, str]:
        """Dashboard variables as Grafana would substitute them (multi-value: a regex group)."""
        chosen = {
            name: self.label_values(query) for name, query in variable_queries(DASHBOARD).items()
        }
        values = {name: "(" + "|".join(found) + ")" for name, found in chosen.items()}
        return {**values, "datasource": "prometheus", "__rate_interval": rate_interval}

    def label_values(self, query: str, **variables: str) -> list[str]:
        """A ``label_values(series, label)`` variable query, through /api/v1/label/.../values."""
        inner, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        selector = substitute(inner, {"namespace": NAMESPACE, "pod": POD, **variables})
        found: list[str] = self.prometheus.api(f"label/{label}/values", **{"match[]": selector})
        return found


# -- the load ---------------------------------------------------------------------------------


async def drive_load(server: PredictorProcess, seconds: float) -> Counter[tuple[str, str, int]]:
    """Mixed traffic for ``seconds``; the status codes the clients got."""
    codes: Counter[tuple[str, str, int]] = Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)

    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

        async def post(model: str, protocol: str, path: str, **kwargs: Any) -> None:
            response = await client.post(path, **kwargs)
            codes[(model, protocol, response.status_code)] += 1

        async def digits_worker(worker: int) -> None:
            sent = 0
            while loop.time() < deadline:
                image = DIGITS_PNG[(worker + sent) % len(DIGITS_PNG)]
                if sent % 3 == 0:
                    body = {
                        "inputs": [
                            {
                                "name": "image",
                                "datatype": "BYTES",
                                "shape": [1],
                                "data": [b64(image)],
                            }
                        ]
                    }
                    await post("digits", "v2", "/v2/models/digits/infer", json=body)
                elif sent % 3 == 1:
                    body2 = {"instances": [{"image_bytes": {"b64": b64(image)}}] * 2}
                    await post("digits", "v1", "/v1/models/digits:predict", json=body2)
                else:
                    headers = {"content-type": "image/png"}
                    await post(
                        "digits", "v1", "/v1/models/digits:predict", content=image, headers=headers
                    )
                sent += 1

        async def grpc_worker() -> None:
            raw = struct.pack("<I", len(DIGITS_PNG[0])) + DIGITS_PNG[0]
            request = pb.ModelInferRequest(
                model_name="digits",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
                ],
                raw_input_contents=[raw],
            )
            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                while loop.time() < deadline:
                    try:
                        await stub.ModelInfer(request, timeout=60)
                        codes[("digits", "grpc", 200)] += 1
                    except grpc.aio.AioRpcError as error:  # counted with its HTTP equivalent
                        codes[("digits", "grpc", GRPC_TO_HTTP[error.code()])] += 1

        async def bad_worker() -> None:
            while loop.time() < deadline:
                garbage = {"content": b"not an image", "headers": {"content-type": "image/png"}}
                await post("digits", "v1", "/v1/models/digits:predict", **garbage)
                await post("_unknown", "v1", "/v1/models/nope:predict", **garbage)
                await asyncio.sleep(0.3)  # pacing the load, not waiting for anything

        async def overflow_worker() -> None:
            # Bursts of multi-image requests: 12 x 6 images against 8 running + 16 queued
            # slots, so most of each burst is refused (queue_full) whatever the CPU speed.
            body = {"instances": [{"image_bytes": {"b64": b64(SLOW_PNG)}}] * 6}
            while loop.time() < deadline:
                burst = [
                    post("slow", "v1", "/v1/models/slow:predict", json=body) for _ in range(12)
                ]
                await asyncio.gather(*burst)
                await asyncio.sleep(0.5)  # pacing

        async def shapes_worker() -> None:
            # The demo detector: scenes with shapes, and a blank image with nothing to find.
            sent = 0
            while loop.time() < deadline:
                image = SHAPES_JPEG[sent % len(SHAPES_JPEG)]
                headers = {"content-type": "image/jpeg"}
                await post(
                    "shapes", "v1", "/v1/models/shapes:predict", content=image, headers=headers
                )
                sent += 1

        await asyncio.gather(
            *(digits_worker(i) for i in range(12)),
            grpc_worker(),
            bad_worker(),
            overflow_worker(),
            shapes_worker(),
        )
    return codes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the fixture ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(
    start_server: StartServer, model_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    models = tmp_path_factory.mktemp("obs-models")
    for name in ("digits", "slow"):
        shutil.copytree(model_folder / name, models / name)
    shutil.copytree(SHAPES, models / "shapes", ignore=shutil.ignore_patterns("samples", "*.py"))
    server = start_server(
        [
            "--model-dir", str(models),
            "--max-batch-size", str(MAX_BATCH),
            "--queue-capacity", str(QUEUE),
            "--max-batch-delay-ms", "20",
        ],
        ["digits", "slow", "shapes"],
        test_archs=True,
    )  # fmt: skip
    workdir = tmp_path_factory.mktemp("prometheus")
    shutil.copy(PLAIN_RULES, workdir / PLAIN_RULES.name)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(workdir / PLAIN_RULES.name)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{server.http_port}"],
                        "labels": {"namespace": NAMESPACE, "pod": POD},
                    },
                    {
                        "targets": [f"127.0.0.1:{free_port()}"],  # nothing listens there
                        "labels": {"namespace": NAMESPACE, "pod": DEAD_POD},
                    },
                ],
            }
        ],
    }
    prometheus = Prometheus(config, workdir)
    try:
        prometheus.wait_ready()
        wait_for(
            "the predictor target to be up",
            lambda: prometheus.query(f'up{{job="{JOB}", pod="{POD}"}} == 1') or None,
        )
        started = time.time()
        client_codes = asyncio.run(drive_load(server, LOAD_S))
        ended = time.time()

        def settled() -> str | None:
            """/metrics once Prometheus holds the same request total (counters settle last)."""
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            total = sum(
                v
                for (name, _), v in parse_metrics(text).items()
                if name == "predictor_requests_total"
            )
            scraped = prometheus.value(f'sum(predictor_requests_total{{job="{JOB}"}})')
            return text if scraped == total else None

        exposition = wait_for("Prometheus to scrape the final request counts", settled)
        wait_for(
            "the alert rules to be evaluated after the load",
            lambda: _evaluated_after(prometheus, ended),
        )
        live = Live(
            server=server,
            prometheus=prometheus,
            client_codes=client_codes,
            exposition=exposition,
            started=started,
            ended=ended,
            gpu="predictor_gpu_memory_used_bytes{" in exposition,
        )
        yield live
    finally:
        prometheus.stop()
        server.stop()


def _evaluated_after(prometheus: Prometheus, when: float) -> bool | None:
    """True once every rule group was last evaluated after ``when`` (RFC 3339 times)."""
    groups = prometheus.api("rules")["groups"]
    times = [re.sub(r"(\.\d{6})\d*", r"\1", g["lastEvaluation"]) for g in groups]
    latest = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in times]
    return True if groups and all(t > when for t in latest) else None


# -- the tests --------------------------------------------------------------------------------


def test_metrics_exposition_passes_promtool(live: Live) -> None:
    result = promtool("check", "metrics", stdin=live.exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_prometheus_counts_what_the_clients_saw(live: Live) -> None:
    result = live.prometheus.query(
        f'sum by (model, protocol, code) (predictor_requests_total{{job="{JOB}"}})'
    )
    seen = {
        (r["metric"]["model"], r["metric"]["protocol"], int(r["metric"]["code"])): float(
            r["value"][1]
        )
        for r in result
    }
    expected = {key: float(count) for key, count in live.client_codes.items()}
    assert {k: v for k, v in seen.items() if v} == expected
    rejected = live.prometheus.query(
        f'sum by (model, reason) (predictor_rejected_total{{job="{JOB}"}}) > 0'
    )
    reasons = {
        (r["metric"]["model"], r["metric"]["reason"]): float(r["value"][1]) for r in rejected
    }
    assert reasons[("slow", "queue_full")] == live.client_codes[("slow", "v1", 503)] > 0
    assert reasons[("digits", "bad_input")] == live.client_codes[("digits", "v1", 400)] > 0
    assert reasons[("_unknown", "unknown_model")] == live.client_codes[("_unknown", "v1", 404)] > 0


def test_variable_queries_find_the_namespace_pod_and_models(live: Live) -> None:
    queries = variable_queries(DASHBOARD)
    assert live.label_values(queries["namespace"]) == [NAMESPACE]
    assert live.label_values(queries["pod"]) == [POD]
    assert live.label_values(queries["model"]) == ["digits", "shapes", "slow"]


@pytest.mark.parametrize(
    ("title", "ref", "expr"),
    panel_queries(DASHBOARD),
    ids=[f"{title}[{ref}]" for title, ref, _ in panel_queries(DASHBOARD)],
)
def test_every_dashboard_query_evaluates(live: Live, title: str, ref: str, expr: str) -> None:
    result = live.prometheus.query(substitute(expr, live.variables()))
    if uses_gpu_metrics(expr) and not live.gpu:
        assert result == [], "NVML series must be absent without a GPU"
        return
    assert result, f"{title}: no data for {expr}"
    assert any(math.isfinite(float(sample["value"][1])) for sample in result), result


def test_batches_fill_above_one(live: Live) -> None:
    for model in ("digits", "slow"):
        p90 = live.prometheus.value(
            "histogram_quantile(0.9, sum by (le) (rate("
            f'predictor_batch_size_bucket{{job="{JOB}", model="{model}"}}[{RATE_INTERVAL}])))'
        )
        assert p90 is not None
        assert p90 > 1, f"{model}: batches did not fill (p90 {p90})"


def test_default_alert_rules_load_and_evaluate_cleanly(live: Live) -> None:
    rules = [r for g in live.prometheus.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == set(alerts(rule_groups()))
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # the dead target is caught at once, pending its 5 minutes
    down = [
        a
        for a in live.prometheus.api("alerts")["alerts"]
        if a["labels"]["alertname"] == "GpuPredictorDown"
    ]
    assert [a["labels"]["pod"] for a in down] == [DEAD_POD]
    assert down[0]["state"] in {"pending", "firing"}  # firing only after 5 minutes


@pytest.mark.parametrize("name", sorted(alerts(rule_groups())))
def test_every_alert_expression_evaluates(live: Live, name: str) -> None:
    """The default rule parses; rendered with hair-trigger thresholds it finds the load."""
    default = alerts(rule_groups())[name]
    live.prometheus.query(default["expr"])  # raises PromQLError when it does not parse
    tripped = alerts(render_alert_rules.render_groups(HAIR_TRIGGER))[name]
    result = live.prometheus.query(tripped["expr"])
    if uses_gpu_metrics(tripped["expr"]) and not live.gpu:
        assert result == []
        return
    assert result, f"{name} found nothing under load: {tripped['expr']}"
    if name == "GpuPredictorDown":
        assert {r["metric"]["pod"] for r in result} == {DEAD_POD}


def test_report_and_draw_the_dashboard(live: Live, tmp_path: Path) -> None:
    """Print what the load produced (``pytest -s``) and draw the dashboard from it."""
    q = live.prometheus.value
    sel = f'job="{JOB}"'
    report: dict[str, float | None] = {}
    for model in ("digits", "slow"):
        msel = f'{sel}, model="{model}"'
        report[f"{model} mean batch size"] = q(
            f"sum(rate(predictor_batch_size_sum{{{msel}}}[{RATE_INTERVAL}])) / "
            f"sum(rate(predictor_batch_size_count{{{msel}}}[{RATE_INTERVAL}]))"
        )
        for quantile in (0.5, 0.9, 0.99):
            report[f"{model} batch size p{quantile * 100:g}"] = q(
                f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(predictor_batch_size_bucket{{{msel}}}[{RATE_INTERVAL}])))"
            )
        for quantile in (0.5, 0.9, 0.99):
            report[f"{model} latency p{quantile * 100:g} (s)"] = q(
                f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(predictor_request_duration_seconds_bucket{{{msel}}}[{RATE_INTERVAL}])))"
            )
        report[f"{model} queue wait p90 (s)"] = q(
            f"histogram_quantile(0.9, sum by (le) "
            f"(rate(predictor_queue_wait_seconds_bucket{{{msel}}}[{RATE_INTERVAL}])))"
        )
        report[f"{model} 5xx ratio"] = q(
            f'(sum(rate(predictor_requests_total{{{msel}, code=~"5.."}}[{RATE_INTERVAL}]))'
            f" or vector(0)) / sum(rate(predictor_requests_total{{{msel}}}[{RATE_INTERVAL}]))"
        )
    seconds = live.ended - live.started
    total = sum(live.client_codes.values())
    print(f"\nobservability live run: {seconds:.1f} s of load, {total / seconds:.0f} requests/s")
    for (model, protocol, code), count in sorted(live.client_codes.items()):
        print(f"  requests {model:8} {protocol:4} {code}: {count}")
    for name, value in report.items():
        print(f"  {name:28} {'-' if value is None else f'{value:.4g}'}")
    states = {
        (a["labels"]["alertname"], a["state"]) for a in live.prometheus.api("alerts")["alerts"]
    }
    print(f"  alerts, default thresholds: {', '.join(f'{n} {s}' for n, s in sorted(states))}")
    assert report["digits mean batch size"] is not None
    assert report["digits mean batch size"] > 1

    variables = live.variables(rate_interval="5s")
    out = Path(os.environ.get("GPU_PREDICTOR_DASHBOARD_PNG", tmp_path / "dashboard.png"))
    png = dashboard_png.render(
        live.prometheus.url, variables, live.started - 3, live.ended + 2, out, step_s=1.0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"  dashboard drawn: {png}")

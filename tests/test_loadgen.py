"""The load generator: percentiles, arrival schedules, bounded runs, reports, live smoke runs."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "load-tests"))

import loadgen
from loadlib import corpus
from loadlib.procs import ServerProcess, free_port
from loadlib.protocols import Target, build_bodies, kserve_pb2
from loadlib.runner import LoadSpec, RunResult, format_summary, run_load
from loadlib.schedule import Phase, arrivals, constant_or_poisson
from loadlib.stats import LatencySummary, fmt_ms, percentile

from tests.support import DIGITS, PredictorProcess

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = {"requests", "duration_s", "throughput_rps", "status_counts", "latency_ms"}


# -- percentiles ------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("size", [2, 3, 10, 101, 1000])
def test_percentile_matches_numpy(size: int) -> None:
    rng = np.random.default_rng(size)
    values = sorted(rng.lognormal(3.0, 1.0, size).tolist())
    for q in (0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_refuses_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = LatencySummary.of([5.0, 1.0, 3.0])
    assert (summary.count, summary.p50, summary.min, summary.max) == (3, 3.0, 1.0, 5.0)
    assert summary.mean == pytest.approx(3.0)
    empty = LatencySummary.of([])
    assert empty.count == 0
    assert set(empty.as_dict()) >= {"p50", "p90", "p99", "max"}
    assert all(v is None for v in empty.as_dict().values())
    assert (fmt_ms(None), fmt_ms(12.34), fmt_ms(1234.0)) == ("-", "12.3ms", "1.23s")


# -- arrival schedules --------------------------------------------------------------------------


def test_constant_rate_is_evenly_spaced_and_bounded_by_duration() -> None:
    times = list(constant_or_poisson(100.0, duration_s=2.0))
    assert len(times) == 200
    assert times[0] == 0.0
    assert np.allclose(np.diff(times), 0.01)
    assert max(times) < 2.0


def test_constant_rate_bounded_by_count() -> None:
    assert len(list(constant_or_poisson(1000.0, count=37))) == 37
    assert len(list(constant_or_poisson(10.0, count=1000, duration_s=1.0))) == 10


def test_poisson_count_and_mean_gap_within_statistical_bounds() -> None:
    rate, duration = 500.0, 40.0
    times = list(constant_or_poisson(rate, poisson=True, seed=7, duration_s=duration))
    expected = rate * duration  # Poisson count: standard deviation sqrt(20000) ~ 141
    assert abs(len(times) - expected) < 5 * math.sqrt(expected)
    gaps = np.diff(times)
    # Exponential gaps: mean 1/rate, standard error of the mean (1/rate)/sqrt(n).
    assert abs(gaps.mean() - 1 / rate) < 5 * (1 / rate) / math.sqrt(len(gaps))
    assert gaps.std() == pytest.approx(1 / rate, rel=0.05)  # exponential: std == mean
    assert all(b > a for a, b in itertools.pairwise(times))


def test_poisson_is_deterministic_with_a_seed() -> None:
    first = list(constant_or_poisson(50.0, poisson=True, seed=3, count=200))
    again = list(constant_or_poisson(50.0, poisson=True, seed=3, count=200))
    other = list(constant_or_poisson(50.0, poisson=True, seed=4, count=200))
    assert first == again
    assert first != other


def test_phases_make_a_burst() -> None:
    burst = [Phase(2.0, 50.0), Phase(2.0, 250.0), Phase(2.0, 50.0)]
    times = np.array(list(arrivals(burst)))
    per_phase = [int(((times >= lo) & (times < lo + 2.0)).sum()) for lo in (0.0, 2.0, 4.0)]
    assert per_phase == [100, 500, 100]


def test_schedule_refuses_unbounded_or_bad_rates() -> None:
    with pytest.raises(ValueError, match="count bound"):
        list(arrivals([Phase(math.inf, 10.0)]))
    with pytest.raises(ValueError, match="positive"):
        list(arrivals([Phase(1.0, 0.0)]))


def test_load_spec_validation() -> None:
    with pytest.raises(ValueError, match="either"):
        LoadSpec(requests=1)
    with pytest.raises(ValueError, match="either"):
        LoadSpec(concurrency=2, rate=5.0, requests=1)
    with pytest.raises(ValueError, match="bound"):
        LoadSpec(concurrency=2)
    assert LoadSpec(rate=10.0, duration_s=3.0, warmup_s=1.0).end_s() == 4.0
    phases = (Phase(1.0, 10.0), Phase(1.0, 30.0))
    assert LoadSpec(phases=phases).offered_rps() == pytest.approx(20.0)


# -- the runner, against an in-process fake server ---------------------------------------------


class FakeSender:
    """Answers after ``delay_s``; every ``fail_every``-th request gets 503."""

    def __init__(self, delay_s: float = 0.0, fail_every: int = 0) -> None:
        self.samples: dict[str, str] = {}
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.calls = 0
        self.inflight = 0
        self.max_inflight = 0

    async def start(self) -> None:
        return None

    async def send(self, index: int) -> str:
        self.calls += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.inflight -= 1
        if self.fail_every and index % self.fail_every == self.fail_every - 1:
            self.samples.setdefault("503", "queue full")
            return "503"
        return "200"

    async def close(self) -> None:
        return None


def run(sender: FakeSender, spec: LoadSpec) -> RunResult:
    return asyncio.run(run_load(sender, spec))


def test_closed_loop_stops_after_the_requests() -> None:
    sender = FakeSender(delay_s=0.001, fail_every=5)
    result = run(sender, LoadSpec(concurrency=4, requests=50))
    report = result.to_json()
    assert sender.calls == 50
    assert sender.max_inflight == 4
    assert report["requests"] == 50
    assert report["ended_by"] == "requests"
    assert report["status_counts"] == {"200": 40, "503": 10}
    assert report["errors"] == {"503": "queue full"}
    assert set(report) >= REPORT_KEYS
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert report["latency_ms"]["p50"] >= 1.0


def test_closed_loop_stops_after_the_duration() -> None:
    sender = FakeSender(delay_s=0.01)
    started = time.perf_counter()
    result = run(sender, LoadSpec(concurrency=3, duration_s=0.5))
    elapsed = time.perf_counter() - started
    report = result.to_json()
    assert 0.5 <= elapsed < 1.5
    assert report["ended_by"] == "duration"
    assert report["duration_s"] == pytest.approx(0.5, abs=0.01)
    assert report["requests"] + report["tail"] == sender.calls
    assert sum(report["status_counts"].values()) == report["requests"]


def test_warmup_answers_are_not_counted() -> None:
    sender = FakeSender(delay_s=0.01)
    report = run(sender, LoadSpec(concurrency=1, duration_s=0.3, warmup_s=0.3)).to_json()
    assert report["warmup_excluded"] > 5
    assert report["requests"] + report["warmup_excluded"] + report["tail"] == sender.calls


def test_open_loop_keeps_its_rate_when_the_server_is_slow() -> None:
    # Each answer takes 0.4 s: a closed loop of 1 would manage ~2 requests; arrivals at
    # 100/s for 0.5 s must all be sent anyway.
    sender = FakeSender(delay_s=0.4)
    report = run(sender, LoadSpec(rate=100.0, duration_s=0.5)).to_json()
    assert report["sent"] == 50
    assert sender.max_inflight >= 35
    assert report["dropped"] == 0
    assert report["offered_rps"] == 100.0
    # Latency counts from the due time: at least the server's 0.4 s.
    assert report["latency_ms"]["min"] >= 400


def test_open_loop_bounds_in_flight_requests_and_counts_drops() -> None:
    sender = FakeSender(delay_s=1.0)
    report = run(sender, LoadSpec(rate=100.0, duration_s=0.5, max_inflight=10)).to_json()
    assert sender.max_inflight == 10
    assert report["sent"] == 10
    assert report["dropped"] == 40


def test_open_loop_bounded_by_requests() -> None:
    sender = FakeSender(delay_s=0.001)
    report = run(sender, LoadSpec(rate=500.0, poisson=True, requests=60)).to_json()
    assert sender.calls == 60
    assert report["requests"] == 60
    assert report["ended_by"] == "requests"
    assert report["poisson"] is True


def test_summary_and_timeline() -> None:
    sender = FakeSender(delay_s=0.002, fail_every=3)
    result = run(sender, LoadSpec(concurrency=2, requests=30))
    result.info.update({"url": "http://x", "model": "m", "protocol": "v1"})
    text = format_summary(result.to_json())
    assert "closed loop, concurrency 2" in text
    assert "503: 10" in text
    rows = result.timeline(bucket_s=10.0)
    assert sum(r["done"] for r in rows) == 30


# -- request bodies ----------------------------------------------------------------------------


IMAGES = [b"\xff\xd8first", b"\xff\xd8second-image", b"\xff\xd8third"]


def test_v1_bodies() -> None:
    bodies, content_type = build_bodies(IMAGES, "v1", "m")
    assert (bodies, content_type) == (IMAGES, "image/jpeg")
    # A raw body holds one image: several per request become v1 JSON instances.
    bodies, content_type = build_bodies(IMAGES, "v1", "m", per_request=2)
    assert content_type == "application/json"
    instances = json.loads(bodies[0])["instances"]
    assert len(instances) == 2
    assert set(instances[0]["image_bytes"]) == {"b64"}


def test_v2_bodies() -> None:
    bodies, _ = build_bodies(IMAGES, "v2", "m", per_request=3)
    (tensor,) = json.loads(bodies[0])["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("image", "BYTES", [3])
    assert len(tensor["data"]) == 3


def test_grpc_bodies_carry_length_prefixed_raw_contents() -> None:
    bodies, _ = build_bodies(IMAGES, "grpc", "digits", per_request=2)
    request = kserve_pb2().ModelInferRequest.FromString(bodies[0])
    assert request.model_name == "digits"
    assert list(request.inputs[0].shape) == [2]
    raw = request.raw_input_contents[0]
    elements, offset = [], 0
    while offset < len(raw):
        (size,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    assert elements == IMAGES[:2]
    # Every image is used by some request.
    used = b"".join(
        kserve_pb2().ModelInferRequest.FromString(b).raw_input_contents[0] for b in bodies
    )
    assert all(image in used for image in IMAGES)


def test_corpus_is_photo_sized_and_cached(tmp_path: Path) -> None:
    sizes = ((640, 480), (320, 240))
    first = corpus.generate(3, seed=1, resolutions=sizes, cache=tmp_path)
    again = corpus.generate(3, seed=1, resolutions=sizes, cache=tmp_path)
    assert first == again
    assert len(list(tmp_path.rglob("*.jpg"))) == 3
    assert first[0][:2] == b"\xff\xd8"
    assert "640x480 x2" in corpus.describe(first)
    # Compresses like a photo, not like a flat test pattern.
    assert 0.1 < len(first[0]) / (640 * 480) < 1.0


# -- the command line, against a trivial server and the live predictor -------------------------


@pytest.fixture(scope="module")
def trivial_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("trivial") / "server.log"
    server = ServerProcess(
        "trivial",
        [sys.executable, "-m", "loadlib.trivial_server", str(port)],
        f"http://127.0.0.1:{port}/",
        log,
        env={"PYTHONPATH": str(ROOT / "load-tests")},
    )
    with server:
        server.start(30)
        yield f"http://127.0.0.1:{port}"


def test_cli_writes_the_json_report(trivial_server: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = loadgen.main(
        [
            "--url", trivial_server, "--model", "m", "--images", str(DIGITS / "samples"),
            "--rate", "200", "--poisson", "--duration", "0.5", "--quiet", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) >= REPORT_KEYS
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert set(report["status_counts"]) == {"200"}
    assert report["requests"] == report["status_counts"]["200"]
    assert abs(report["requests"] - 100) < 60
    assert report["mode"] == "open"


def test_cli_refuses_inconsistent_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        loadgen.main(["--concurrency", "2"])  # no bound
    assert "bound" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        loadgen.main(["--concurrency", "2", "--poisson", "--requests", "3"])


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc"])
def test_smoke_against_the_live_server(
    digits_server: PredictorProcess, protocol: str, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    args = [
        "--url", digits_server.url, "--grpc-port", str(digits_server.grpc_port),
        "--model", "digits", "--protocol", protocol, "--images", str(DIGITS / "samples"),
        "--concurrency", "4", "--requests", "24", "--quiet", "--json", str(out),
    ]  # fmt: skip
    if protocol != "v1":
        args += ["--images-per-request", "3"]
    assert loadgen.main(args) == 0
    report = json.loads(out.read_text())
    assert report["status_counts"] == {"200": 24}
    assert report["requests"] == 24
    per_request = 1 if protocol == "v1" else 3
    assert report["images_per_s"] == pytest.approx(report["ok_rps"] * per_request, rel=1e-3)
    assert report["protocol"] == protocol


def test_target_endpoints() -> None:
    target = Target("http://127.0.0.1:9000/", "m", protocol="v2", grpc_port=9001)
    assert target.endpoint() == "http://127.0.0.1:9000/v2/models/m/infer"
    assert target.grpc_target() == "127.0.0.1:9001"
    assert Target("http://h:1", "m").endpoint() == "http://h:1/v1/models/m:predict"
    assert Target("http://h:1", "m", path="/x").endpoint() == "http://h:1/x"


def test_statistics_helpers_agree() -> None:
    # The progress line uses numpy; the report uses stats.percentile: same definition.
    values = sorted(float(v) for v in range(1, 200, 3))
    assert percentile(values, 50) == pytest.approx(statistics.median(values))


def test_scenario_memory_check() -> None:
    import scenarios

    mib = 2**20
    flat = [(float(t), 1000.0 * mib) for t in range(9)]
    ok, figures = scenarios.grew_ok(flat)
    assert ok
    assert figures["rss_start_mib"] == 1000.0
    leak = [(float(t), (1000.0 + 50 * t) * mib) for t in range(9)]
    assert not scenarios.grew_ok(leak)[0]
    assert scenarios.grew_ok(flat[:2])[0]  # too few samples to judge


def test_open_loop_reports_the_rate_that_arrived() -> None:
    sender = FakeSender(delay_s=0.001)
    report = run(sender, LoadSpec(rate=200.0, poisson=True, duration_s=1.0, seed=1)).to_json()
    assert report["arrived_rps"] == pytest.approx(report["sent"] / 1.0, rel=0.05)
    assert abs(report["arrived_rps"] - 200.0) < 5 * math.sqrt(200.0)


def test_closed_loop_throughput_counts_requests_starved_past_the_window() -> None:
    """Little's law over the requests *sent* in the window: a server that starves one client
    past the window must not look faster than it is."""
    from loadlib.runner import Recorder

    rec = Recorder(0.0)
    for second in range(10):  # client A: one answer per second
        rec.add(float(second), float(second + 1), "200")
    rec.add(0.0, 20.0, "200")  # client B: starved, answered during the drain
    rec.sent = 11
    spec = LoadSpec(concurrency=2, duration_s=10.0)
    report = RunResult(spec, rec, 0.0, 10.0, "duration").to_json()
    mean_s = (10 * 1.0 + 20.0) / 11
    assert report["littles_rps"] == pytest.approx(2 / mean_s, rel=1e-3)
    assert report["littles_rps"] < 1.0  # averaging only the answers in the window gives 2.0

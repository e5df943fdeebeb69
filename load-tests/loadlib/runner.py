"""The load engine: closed loop (N users) or open loop (arrivals on a fixed schedule).

* Closed loop: ``concurrency`` workers, each sending its next request as soon as the last
  one is answered. Latency is measured from send to answer.
* Open loop: requests are due on a schedule fixed in advance (:mod:`loadgen.schedule`);
  each is sent at its due time whatever the server is doing, so a slow server never slows
  the arrivals. In-flight requests are counted and bounded (``max_inflight``): an arrival
  that finds the bound reached is *dropped* (counted, never sent) instead of waiting.
  Latency is measured from the due time, so client-side lag counts against the server as
  it would for a real client (no coordinated omission).

A run ends by itself: after ``requests`` requests and/or ``duration_s`` seconds. With a
duration, only answers that arrive inside the measured window (after ``warmup_s``, before
the end) are counted; requests still in flight at the end are awaited (so the next test
finds an idle server) and reported as ``tail``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from loadlib.protocols import Sender
from loadlib.schedule import Phase, arrivals
from loadlib.stats import LatencySummary, fmt_ms

OK = "200"


@dataclass(frozen=True)
class LoadSpec:
    """What load to apply and when to stop.

    Attributes:
        concurrency: closed loop with this many workers.
        rate: open loop at this many requests per second.
        phases: open loop with a rate profile (overrides ``rate`` and ``duration_s``).
        poisson: exponential inter-arrival gaps instead of even spacing (open loop).
        requests: stop after this many requests.
        duration_s: stop issuing after ``warmup_s + duration_s`` seconds.
        warmup_s: answers before this are not counted.
        max_inflight: open-loop bound on requests in flight (beyond: dropped).
        seed: seed of the Poisson schedule.
        images_per_request: images in each request (for images per second).
        drain_timeout_s: how long to await in-flight requests at the end.
    """

    concurrency: int | None = None
    rate: float | None = None
    phases: tuple[Phase, ...] | None = None
    poisson: bool = False
    requests: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    max_inflight: int = 1000
    seed: int | None = 0
    images_per_request: int = 1
    drain_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        open_loop = self.rate is not None or self.phases is not None
        if (self.concurrency is None) == (not open_loop):
            raise ValueError("give either a concurrency (closed loop) or a rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be > 0")
        if self.phases is None and self.requests is None and self.duration_s is None:
            raise ValueError("bound the run with requests and/or duration")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be >= 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("duration must be > 0")
        if self.warmup_s < 0 or self.max_inflight < 1 or self.images_per_request < 1:
            raise ValueError("warmup >= 0, max in-flight >= 1, images per request >= 1")

    @property
    def mode(self) -> str:
        """``closed`` or ``open``."""
        return "closed" if self.concurrency is not None else "open"

    def schedule_phases(self) -> tuple[Phase, ...]:
        """The open-loop rate profile (one phase unless ``phases`` is given)."""
        if self.phases is not None:
            return self.phases
        assert self.rate is not None
        total = math.inf if self.duration_s is None else self.warmup_s + self.duration_s
        return (Phase(total, self.rate),)

    def end_s(self) -> float:
        """Seconds from the start after which nothing new is sent (``inf``: count bound)."""
        if self.phases is not None:
            return sum(p.duration_s for p in self.phases)
        if self.duration_s is None:
            return math.inf
        return self.warmup_s + self.duration_s

    def offered_rps(self) -> float | None:
        """Mean offered rate of an open loop."""
        phases = self.schedule_phases() if self.mode == "open" else ()
        if not phases:
            return None
        if any(math.isinf(p.duration_s) for p in phases):
            return phases[0].rate
        total = sum(p.duration_s for p in phases)
        return sum(p.rate * p.duration_s for p in phases) / total


class Recorder:
    """Every answer of a run: start (or due) time, end time, status key."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.codes: list[str] = []
        self.sent = 0
        self.dropped = 0
        self.abandoned = 0
        self.lags: list[float] = []
        self.dues: list[float] = []

    def add(self, start: float, end: float, code: str) -> None:
        """Record one answered request."""
        self.starts.append(start)
        self.ends.append(end)
        self.codes.append(code)

    @property
    def done(self) -> int:
        """Answers so far."""
        return len(self.codes)


@dataclass
class RunResult:
    """A finished run: the recorded answers and the measured window."""

    spec: LoadSpec
    recorder: Recorder
    window_start: float
    window_end: float
    ended_by: str
    samples: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def counted(self) -> list[int]:
        """Indices of the answers inside the measured window."""
        rec = self.recorder
        return [i for i, end in enumerate(rec.ends) if self.window_start <= end <= self.window_end]

    def to_json(self) -> dict[str, Any]:
        """The JSON report (see ``load-tests/loadgen.py --json``)."""
        rec = self.recorder
        counted = self.counted()
        duration = max(1e-9, self.window_end - self.window_start)
        codes = Counter(rec.codes[i] for i in counted)
        latencies = [1000 * (rec.ends[i] - rec.starts[i]) for i in counted]
        ok_latencies = [
            lat for lat, i in zip(latencies, counted, strict=True) if rec.codes[i] == OK
        ]
        warm = sum(1 for end in rec.ends if end < self.window_start)
        tail = sum(1 for end in rec.ends if end > self.window_end)
        per_request = self.spec.images_per_request
        report: dict[str, Any] = {
            **self.info,
            "mode": self.spec.mode,
            "concurrency": self.spec.concurrency,
            "offered_rps": _round(self.spec.offered_rps()),
            "poisson": self.spec.poisson if self.spec.mode == "open" else None,
            "images_per_request": per_request,
            "requests": len(counted),
            "duration_s": round(duration, 4),
            "throughput_rps": round(len(counted) / duration, 3),
            "ok_rps": round(codes.get(OK, 0) / duration, 3),
            "images_per_s": round(codes.get(OK, 0) * per_request / duration, 3),
            "status_counts": dict(sorted(codes.items())),
            "latency_ms": LatencySummary.of(latencies).as_dict(),
            "latency_ok_ms": LatencySummary.of(ok_latencies).as_dict(),
            "sent": rec.sent,
            "dropped": rec.dropped,
            "warmup_excluded": warm,
            "tail": tail,
            "abandoned": rec.abandoned,
            "ended_by": self.ended_by,
            "errors": dict(self.samples),
        }
        started = [i for i, s in enumerate(rec.starts) if self.window_start <= s <= self.window_end]
        if self.spec.mode == "closed" and started and not rec.abandoned:
            # Little's law for a closed loop without think time: clients / mean latency.
            # Robust where answers come in bursts (whole batches) that a short window
            # would count as all or nothing. The mean is over the requests *sent* in the
            # window, answered during the drain too: averaging those *answered* in the
            # window would leave out the slowest (a server that starves some requests
            # past the window would look faster than it is).
            mean_s = sum(rec.ends[i] - rec.starts[i] for i in started) / len(started)
            littles = (self.spec.concurrency or 1) / mean_s
            ok_fraction = sum(1 for i in started if rec.codes[i] == OK) / len(started)
            report["littles_rps"] = round(littles, 3)
            report["littles_images_per_s"] = round(littles * ok_fraction * per_request, 3)
        if self.spec.mode == "open" and rec.lags:
            # The rate that actually arrived in the window (a Poisson count over a few
            # seconds strays from the nominal rate by several percent).
            arrived = sum(1 for due in rec.dues if self.window_start <= due < self.window_end)
            report["arrived_rps"] = round(arrived / duration, 3)
            lag = LatencySummary.of(1000 * v for v in rec.lags)
            report["schedule_lag_ms"] = {"p99": _round(lag.p99), "max": _round(lag.max)}
        return report

    def timeline(self, bucket_s: float = 1.0) -> list[dict[str, Any]]:
        """Answers per time bucket (by answer time): count, OK count, p50/p99, codes."""
        rec = self.recorder
        if not rec.ends:
            return []
        buckets: dict[int, list[int]] = {}
        for i, end in enumerate(rec.ends):
            buckets.setdefault(int((end - rec.t0) // bucket_s), []).append(i)
        rows = []
        for key in range(max(buckets) + 1):
            members = buckets.get(key, [])
            lat = LatencySummary.of(1000 * (rec.ends[i] - rec.starts[i]) for i in members)
            codes = Counter(rec.codes[i] for i in members)
            rows.append(
                {
                    "t_s": round(key * bucket_s, 3),
                    "done": len(members),
                    "ok": codes.get(OK, 0),
                    "p50_ms": _round(lat.p50),
                    "p99_ms": _round(lat.p99),
                    "codes": dict(codes),
                }
            )
        return rows


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class Progress:
    """A line per interval on ``stream``: sent, done, rps, p50/p99 so far, codes."""

    def __init__(
        self, recorder: Recorder, stream: TextIO = sys.stderr, interval_s: float = 1.0
    ) -> None:
        self.recorder = recorder
        self.stream = stream
        self.interval_s = interval_s

    def line(self, now: float, last_done: int, last_time: float) -> str:
        """The progress line at ``now``."""
        rec = self.recorder
        done = rec.done
        rps = (done - last_done) / max(1e-9, now - last_time)
        if done:
            lat = np.asarray(rec.ends[:done]) - np.asarray(rec.starts[:done])
            p50, p99 = (float(v) * 1000 for v in np.percentile(lat, [50, 99]))
            latency = f"p50 {fmt_ms(p50):>7} p99 {fmt_ms(p99):>7}"
        else:
            latency = f"p50 {'-':>7} p99 {'-':>7}"
        codes = " ".join(f"{k}:{v}" for k, v in sorted(Counter(rec.codes[:done]).items()))
        dropped = f" dropped {rec.dropped}" if rec.dropped else ""
        return (
            f"[{now - rec.t0:6.1f}s] sent {rec.sent:7d} done {done:7d} "
            f"inflight {rec.sent - done:4d} rps {rps:8.1f} {latency}{dropped}  {codes}"
        )

    async def run(self) -> None:
        """Print until cancelled."""
        last_done, last_time = 0, time.perf_counter()
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.perf_counter()
            print(self.line(now, last_done, last_time), file=self.stream, flush=True)
            last_done, last_time = self.recorder.done, now


async def run_load(sender: Sender, spec: LoadSpec, progress: TextIO | None = None) -> RunResult:
    """Apply ``spec`` through ``sender`` (already started) until the run ends by itself.

    Args:
        sender: a started sender.
        spec: the load.
        progress: where to print a progress line per second (``None``: quiet).

    Returns:
        The recorded run.
    """
    t0 = time.perf_counter()
    recorder = Recorder(t0)
    reporter = None
    if progress is not None:
        reporter = asyncio.create_task(Progress(recorder, progress).run())
    try:
        if spec.mode == "closed":
            ended_by, last = await _closed(sender, spec, recorder)
        else:
            ended_by, last = await _open(sender, spec, recorder)
    finally:
        if reporter is not None:
            reporter.cancel()
    window_start = t0 + spec.warmup_s
    # Ended by count: up to the last answer. Ended by time: the window's end, so answers
    # of requests still in flight then are the tail (awaited, not counted).
    window_end = max(recorder.ends, default=last) if ended_by == "requests" else t0 + spec.end_s()
    return RunResult(spec, recorder, window_start, window_end, ended_by, dict(sender.samples))


async def _closed(sender: Sender, spec: LoadSpec, rec: Recorder) -> tuple[str, float]:
    assert spec.concurrency is not None
    deadline = rec.t0 + spec.end_s()
    tickets = [spec.requests if spec.requests is not None else math.inf]
    indices = itertools.count()

    async def worker() -> None:
        while tickets[0] > 0 and time.perf_counter() < deadline:
            tickets[0] -= 1
            index = next(indices)
            rec.sent += 1
            started = time.perf_counter()
            code = await sender.send(index)
            rec.add(started, time.perf_counter(), code)

    tasks = [asyncio.create_task(worker()) for _ in range(spec.concurrency)]
    timeout = None if math.isinf(deadline) else max(0.0, deadline - time.perf_counter())
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    await _drain(pending, spec.drain_timeout_s, rec)
    ended_by = (
        "requests" if tickets[0] <= 0 and max(rec.ends, default=0) <= deadline else "duration"
    )
    return ended_by, time.perf_counter()


async def _open(sender: Sender, spec: LoadSpec, rec: Recorder) -> tuple[str, float]:
    inflight: set[asyncio.Task[None]] = set()

    async def one(index: int, due: float) -> None:
        code = await sender.send(index)
        rec.add(due, time.perf_counter(), code)

    schedule = arrivals(
        spec.schedule_phases(), poisson=spec.poisson, seed=spec.seed, count=spec.requests
    )
    issued = 0
    for index, offset in enumerate(schedule):
        due = rec.t0 + offset
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif index % 8 == 0:
            await asyncio.sleep(0)  # behind schedule: still let answers be read
        rec.lags.append(max(0.0, time.perf_counter() - due))
        rec.dues.append(due)
        issued += 1
        if len(inflight) >= spec.max_inflight:
            rec.dropped += 1
            continue
        rec.sent += 1
        task = asyncio.create_task(one(index, due))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    end = rec.t0 + spec.end_s()
    if not math.isinf(end) and time.perf_counter() < end:
        await asyncio.sleep(end - time.perf_counter())
    await _drain(set(inflight), spec.drain_timeout_s, rec)
    by_count = spec.requests is not None and issued >= spec.requests
    ended_by = "requests" if by_count and max(rec.ends, default=0) <= end else "duration"
    return ended_by, time.perf_counter()


async def _drain(pending: set[asyncio.Task[None]], timeout_s: float, rec: Recorder) -> None:
    """Await in-flight requests up to ``timeout_s``; cancel (and count) the rest."""
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=timeout_s)
    for task in still:
        task.cancel()
    if still:
        rec.abandoned += len(still)
        await asyncio.gather(*still, return_exceptions=True)


def format_summary(report: dict[str, Any]) -> str:
    """A human summary table of a JSON report."""
    lat = report["latency_ms"]
    ok = report["latency_ok_ms"]
    rows: list[tuple[str, str]] = [
        (
            "target",
            f"{report.get('url', '?')} model={report.get('model', '?')} "
            f"protocol={report.get('protocol', '?')}",
        ),
        (
            "load",
            f"closed loop, concurrency {report['concurrency']}"
            if report["mode"] == "closed"
            else f"open loop, {report['offered_rps']} req/s offered"
            + (" (Poisson)" if report.get("poisson") else " (constant)"),
        ),
        ("images/request", str(report["images_per_request"])),
        (
            "requests",
            f"{report['requests']} in {report['duration_s']:.2f} s (ended by {report['ended_by']})",
        ),
        (
            "throughput",
            f"{report['throughput_rps']:.1f} req/s, "
            f"{report['images_per_s']:.1f} images/s answered 200",
        ),
        ("latency all", _lat_row(lat)),
        ("latency 200", _lat_row(ok)),
        ("status", "  ".join(f"{k}: {v}" for k, v in report["status_counts"].items()) or "-"),
    ]
    extra = []
    for key in ("dropped", "warmup_excluded", "tail", "abandoned"):
        if report.get(key):
            extra.append(f"{key} {report[key]}")
    if extra:
        rows.append(("not counted", ", ".join(extra)))
    if report.get("schedule_lag_ms"):
        lag = report["schedule_lag_ms"]
        rows.append(("client lag", f"p99 {fmt_ms(lag['p99'])}, max {fmt_ms(lag['max'])}"))
    for code, message in report.get("errors", {}).items():
        rows.append((f"first {code}", message.replace("\n", " ")[:160]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _lat_row(lat: dict[str, float | None]) -> str:
    keys: Sequence[str] = ("p50", "p90", "p99", "max", "mean")
    return "  ".join(f"{k} {fmt_ms(lat[k]):>8}" for k in keys)

"""Load scenarios with pass/fail checks: steady, burst, overload and a short soak.

    uv run load-tests/scenarios.py all --serve load-tests/.corpus/models/resnet18
    uv run load-tests/scenarios.py overload --url http://127.0.0.1:8080 --model resnet18

Against a running server (``--url``/``--model``) or one it starts itself on 127.0.0.1
(``--serve MODEL_DIR``; stopped by PID at the end, also on errors and Ctrl-C). Without
``--rate`` the capacity is probed first (closed loop, 32 clients) and the scenarios are
set from it:

* steady: Poisson arrivals at 60% of capacity. Checks: every answer 200.
* burst: 40% of capacity, then 5x that (2x capacity) for 2 s, then 40% again. Checks: no
  answer but 200 or 503, and p99 back within 2x its pre-burst value within 5 s.
* overload: 3x capacity. Checks: the excess is shed with 503 (not timeouts or 5xx), the
  admitted requests' p99 stays under the queue's drain time (1.5 x queue capacity /
  goodput + 1 s), goodput (200s per second) stays at half the capacity or more, and the
  server's RSS (``process_resident_memory_bytes`` from its ``/metrics``) does not grow by
  more than 10% + 64 MiB.
* soak: 50% of capacity for ``--soak-s`` seconds (default 60). Checks: every answer 200,
  p99 of the last third within 2x the first third, RSS growth within 10% + 64 MiB.

Exit code 0 when every check passed, 1 otherwise; ``--json FILE`` writes every result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from loadlib import corpus
from loadlib.cli import HelpFormatter
from loadlib.procs import ServerProcess, free_port
from loadlib.promtext import sample_sum
from loadlib.protocols import PROTOCOLS, Target, make_sender
from loadlib.runner import LoadSpec, RunResult, run_load
from loadlib.schedule import Phase
from loadlib.stats import LatencySummary, fmt_ms
from loadlib.systems import LOAD_TESTS

SCENARIOS = ("steady", "burst", "overload", "soak")
RSS_METRIC = "process_resident_memory_bytes"
MIB = 2**20


@dataclass
class Outcome:
    """A scenario's result: its load report, extra figures and named checks."""

    name: str
    report: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(self.checks.values())


async def rss_bytes(session: aiohttp.ClientSession, url: str) -> float | None:
    """The server's resident memory from its ``/metrics``, if it exports it."""
    try:
        async with session.get(url.rstrip("/") + "/metrics") as reply:
            return sample_sum(await reply.text(), RSS_METRIC)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def measure(
    target: Target,
    images: Sequence[bytes],
    spec: LoadSpec,
    sample_every_s: float = 2.0,
    progress: bool = True,
) -> tuple[RunResult, list[tuple[float, float]]]:
    """Run ``spec`` while sampling the server's RSS; the run and ``(t, rss)`` samples."""
    sender = make_sender(target, images, spec.images_per_request, 1024)
    samples: list[tuple[float, float]] = []
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def sampler() -> None:
            while True:
                value = await rss_bytes(session, target.url)
                if value is not None:
                    samples.append((loop.time() - started, value))
                await asyncio.sleep(sample_every_s)

        task = asyncio.create_task(sampler())
        await sender.start()
        try:
            result = await run_load(sender, spec, sys.stderr if progress else None)
        finally:
            await sender.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        value = await rss_bytes(session, target.url)
        if value is not None:
            samples.append((loop.time() - started, value))
    return result, samples


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def grew_ok(samples: Sequence[tuple[float, float]]) -> tuple[bool, dict[str, Any]]:
    """RSS at the end within 10% + 64 MiB of the first third's mean (no leak-like growth)."""
    if len(samples) < 3:
        return True, {"rss_samples": len(samples)}
    values = [v for _, v in samples]
    third = max(1, len(values) // 3)
    start = sum(values[:third]) / third
    end = sum(values[-third:]) / third
    figures = {
        "rss_start_mib": round(start / MIB, 1),
        "rss_end_mib": round(end / MIB, 1),
        "rss_max_mib": round(max(values) / MIB, 1),
    }
    return end <= start * 1.10 + 64 * MIB, figures


async def probe_capacity(target: Target, images: Sequence[bytes], seconds: float) -> float:
    """Requests per second answered 200 with 32 clients (closed loop)."""
    sender = make_sender(target, images, 1, 32)
    await sender.start()
    try:
        await run_load(sender, LoadSpec(concurrency=8, duration_s=2.0))
        result = await run_load(sender, LoadSpec(concurrency=32, duration_s=seconds, warmup_s=1))
    finally:
        await sender.close()
    return float(result.to_json()["ok_rps"])


async def steady(target: Target, images: Sequence[bytes], rate: float, seconds: float) -> Outcome:
    spec = LoadSpec(rate=rate, poisson=True, duration_s=seconds, warmup_s=1.0)
    result, _ = await measure(target, images, spec)
    report = result.to_json()
    return Outcome(
        "steady",
        report,
        checks={"every answer 200": set(report["status_counts"]) == {"200"}},
    )


async def burst(target: Target, images: Sequence[bytes], rate: float) -> Outcome:
    base_s, burst_s, after_s = 5.0, 2.0, 8.0
    phases = (Phase(base_s, rate), Phase(burst_s, 5 * rate), Phase(after_s, rate))
    result, _ = await measure(target, images, LoadSpec(phases=phases, poisson=True))
    report = result.to_json()
    rec = result.recorder

    def p99(lo: float, hi: float) -> float | None:
        latencies = [
            1000 * (end - start)
            for start, end, code in zip(rec.starts, rec.ends, rec.codes, strict=True)
            if lo <= end - rec.t0 < hi and code == "200"
        ]
        return LatencySummary.of(latencies).p99

    before = p99(1.0, base_s)
    during = p99(base_s, base_s + burst_s)
    recovered_at = None
    for step in range(int(after_s * 2)):
        lo = base_s + burst_s + step * 0.5
        value = p99(lo, lo + 1.0)
        if before is not None and value is not None and value <= 2 * max(before, 1.0):
            recovered_at = step * 0.5
            break
    codes = set(report["status_counts"])
    return Outcome(
        "burst",
        report,
        figures={
            "p99_before_ms": _round(before),
            "p99_burst_ms": _round(during),
            "recovered_after_s": recovered_at,
            "timeline": result.timeline(0.5),
        },
        checks={
            "only 200 or 503": codes <= {"200", "503"},
            "p99 back within 2x in 5 s": recovered_at is not None and recovered_at <= 5.0,
        },
    )


async def overload(
    target: Target,
    images: Sequence[bytes],
    capacity: float,
    seconds: float,
    queue_capacity: int,
) -> Outcome:
    spec = LoadSpec(rate=3 * capacity, duration_s=seconds, warmup_s=2.0, max_inflight=4000)
    result, samples = await measure(target, images, spec)
    report = result.to_json()
    # Admitted requests wait at most for the queue ahead of them to drain at the goodput
    # actually reached under overload (rejecting requests costs CPU too).
    goodput = max(report["ok_rps"], 1e-9)
    bound_ms = 1000 * (1.5 * queue_capacity / goodput + 1.0)
    admitted_p99 = report["latency_ok_ms"]["p99"]
    codes = report["status_counts"]
    memory_ok, figures = grew_ok(samples)
    figures.update(
        {
            "goodput_rps": round(goodput, 1),
            "goodput_of_capacity": round(goodput / capacity, 2),
            "admitted_p99_bound_ms": round(bound_ms, 1),
            "shed_fraction": round(codes.get("503", 0) / max(1, report["requests"]), 3),
        }
    )
    return Outcome(
        "overload",
        report,
        figures=figures,
        checks={
            "excess shed with 503": codes.get("503", 0) > 0,
            "no timeouts or other errors": set(codes) <= {"200", "503"},
            "admitted p99 bounded": admitted_p99 is not None and admitted_p99 <= bound_ms,
            "goodput stays >= 50% of capacity": goodput >= 0.5 * capacity,
            "RSS does not grow": memory_ok,
        },
    )


async def soak(target: Target, images: Sequence[bytes], rate: float, seconds: float) -> Outcome:
    spec = LoadSpec(rate=rate, poisson=True, duration_s=seconds, warmup_s=2.0)
    result, samples = await measure(target, images, spec, sample_every_s=5.0)
    report = result.to_json()
    rec = result.recorder
    third = seconds / 3
    start = result.window_start

    def p99(lo: float, hi: float) -> float | None:
        return LatencySummary.of(
            1000 * (e - s)
            for s, e in zip(rec.starts, rec.ends, strict=True)
            if start + lo <= e < start + hi
        ).p99

    first, last = p99(0, third), p99(2 * third, seconds)
    memory_ok, figures = grew_ok(samples)
    figures.update({"p99_first_third_ms": _round(first), "p99_last_third_ms": _round(last)})
    return Outcome(
        "soak",
        report,
        figures=figures,
        checks={
            "every answer 200": set(report["status_counts"]) == {"200"},
            "p99 stable (last third <= 2x first)": (
                first is not None and last is not None and last <= 2 * max(first, 1.0)
            ),
            "RSS does not grow": memory_ok,
        },
    )


async def run_scenarios(args: argparse.Namespace, target: Target) -> list[Outcome]:
    images = corpus.named("thumbs" if args.thumbnails else "photos", args.corpus)
    capacity = args.capacity
    if capacity is None:
        print("probing capacity (closed loop, 32 clients)...", file=sys.stderr)
        capacity = await probe_capacity(target, images, args.probe_s)
        print(f"capacity: {capacity:.1f} req/s", file=sys.stderr)
    outcomes = []
    for name in SCENARIOS if args.scenario == "all" else (args.scenario,):
        print(f"--- {name}", file=sys.stderr)
        if name == "steady":
            outcome = await steady(target, images, 0.6 * capacity, args.duration)
        elif name == "burst":
            outcome = await burst(target, images, 0.4 * capacity)
        elif name == "overload":
            outcome = await overload(target, images, capacity, args.duration, args.queue_capacity)
        else:
            outcome = await soak(target, images, 0.5 * capacity, args.soak_s)
        outcome.figures["capacity_rps"] = round(capacity, 2)
        print_outcome(outcome)
        outcomes.append(outcome)
    return outcomes


def print_outcome(outcome: Outcome) -> None:
    report = outcome.report
    lat = report["latency_ok_ms"]
    codes = " ".join(f"{k}:{v}" for k, v in report["status_counts"].items())
    print(
        f"{outcome.name:9s} offered {report['offered_rps']:.1f}/s, answered 200 "
        f"{report['ok_rps']:.1f}/s, p50 {fmt_ms(lat['p50'])} p99 {fmt_ms(lat['p99'])} [{codes}]"
    )
    for key, value in outcome.figures.items():
        if key != "timeline":
            print(f"    {key}: {value}")
    for check, ok in outcome.checks.items():
        print(f"    {'PASS' if ok else 'FAIL'}  {check}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenarios",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("scenario", choices=(*SCENARIOS, "all"))
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", help="model name (default: the --serve directory's name)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="v1")
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument(
        "--serve",
        type=Path,
        metavar="MODEL_DIR",
        help="start gpu-predictor on this model directory (127.0.0.1)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra flag for the started server, repeatable "
        "(e.g. --server-arg=--queue-capacity=64)",
    )
    parser.add_argument("--capacity", type=float, help="req/s to base rates on (skip probe)")
    parser.add_argument("--probe-s", type=float, default=5.0, help="capacity probe length")
    parser.add_argument(
        "--duration", type=float, default=15.0, help="seconds of steady and of overload"
    )
    parser.add_argument("--soak-s", type=float, default=60.0, help="seconds of soak")
    parser.add_argument(
        "--queue-capacity",
        type=int,
        default=256,
        help="the server's --queue-capacity (bounds admitted latency)",
    )
    parser.add_argument("--thumbnails", action="store_true", help="thumbnail corpus")
    parser.add_argument("--corpus", type=int, default=24)
    parser.add_argument("--json", type=Path, metavar="FILE")
    return parser  # fmt: skip


def interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so every server started is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    server = None
    url, grpc_port, model = args.url, args.grpc_port, args.model
    if args.serve is not None:
        http, grpc_port = free_port(), free_port()
        url = f"http://127.0.0.1:{http}"
        model = model or args.serve.resolve().name
        server = ServerProcess(
            "gpu-predictor",
            [
                sys.executable, "-m", "predictor", "serve",
                "--model-dir", str(args.serve), "--host", "127.0.0.1",
                "--http-port", str(http), "--grpc-port", str(grpc_port),
                *args.server_arg,
            ],
            f"{url}/v2/models/{model}/ready",
            LOAD_TESTS / "results" / "scenarios-server.log",
        )  # fmt: skip
    if model is None:
        print("scenarios: --model (or --serve) is needed", file=sys.stderr)
        return 2
    target = Target(url, model, protocol=args.protocol, grpc_port=grpc_port)
    signal.signal(signal.SIGTERM, interrupt)  # SIGTERM too stops the servers started
    try:
        if server is not None:
            print(f"starting gpu-predictor on {args.serve}...", file=sys.stderr)
            server.start()
        outcomes = asyncio.run(run_scenarios(args, target))
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {"scenario": o.name, "passed": o.passed, "checks": o.checks,
                     "figures": o.figures, "report": o.report}
                    for o in outcomes
                ],
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )  # fmt: skip
    failed = [o.name for o in outcomes if not o.passed]
    print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""One command, one machine, one model directory and corpus: us against the limit and peers.

    uv run --group peers load-tests/bench.py            # full run (~35-40 min on 2 CPU cores)
    uv run --group peers load-tests/bench.py --quick    # one model, fewer points (< 5 min)
    uv run --group peers load-tests/bench.py --device cuda --dtype float16   # on a GPU

For each workload (a model and an image corpus) it measures, in this order:

1. the limits, in process and without HTTP: the engine's batched throughput per batch size,
   and decode + resize throughput on its own (``loadlib/limits.py``, in a subprocess);
2. every system (ours with batching, ours with ``--max-batch-size 1``, a plain KServe model,
   a naive FastAPI server, mosec, LitServe), each started on 127.0.0.1 and stopped by PID:
   throughput and latency against closed-loop concurrency, then latency against offered
   rate (open loop, Poisson arrivals, at fractions of that system's best throughput).

The client's own ceiling (against a trivial server) is measured first. Results go to
``load-tests/results/bench-<time>.json`` and ``docs/benchmarks.json``; ``docs/benchmarks.md``
and ``docs/img/*.png`` are rendered from them (``--report FILE`` renders a run again without
measuring).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from loadlib import corpus, report
from loadlib.cli import HelpFormatter
from loadlib.procs import ServerProcess, free_port
from loadlib.protocols import Target, make_sender
from loadlib.runner import LoadSpec, run_load
from loadlib.systems import (
    LOAD_TESTS,
    MAX_BATCH_DELAY_MS,
    MAX_BATCH_SIZE,
    SYSTEMS,
    ServerSettings,
    System,
)
from loadlib.workload import MODELS, prepare_models

ROOT = LOAD_TESTS.parent
RESULTS = LOAD_TESTS / "results"
REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Workload:
    """A model with an image corpus, and the systems measured on it (``None``: all)."""

    key: str
    model: str
    corpus: str
    systems: tuple[str, ...] | None = None
    about: str = ""
    grpc_series: bool = False


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        Workload("resnet18", "resnet18", "photos", about="compute-bound, photo-sized JPEGs"),
        Workload("resnet50", "resnet50", "photos", about="compute-bound, photo-sized JPEGs"),
        Workload(
            "mobilenet_v3_small-96",
            "mobilenet_v3_small-96",
            "thumbs",
            about="overhead-bound: a tiny model at 96 px fed thumbnails, so serving overhead "
            "(HTTP, batching, scheduling) is what is left",
            grpc_series=True,
        ),
        Workload(
            "mobilenet_v3_small-96-photos",
            "mobilenet_v3_small-96",
            "photos",
            systems=("ours", "ours-nobatch"),
            about="the same tiny model fed photo-sized JPEGs: decode-bound",
        ),
        Workload(
            "shapes",
            "shapes",
            "scenes",
            systems=("ours", "ours-nobatch"),
            about="detection: the shapes demo detector (FCOS, 192-384 px) fed its own scenes, "
            "160-640 px of mixed sizes and aspects; no peer batches mixed-size detection",
        ),
        Workload(
            "fasterrcnn_mobilenet_320",
            "fasterrcnn_mobilenet_320",
            "photos",
            systems=("ours", "ours-nobatch"),
            about="detection: torchvision's fasterrcnn_mobilenet_v3_large_320_fpn (random "
            "weights, 320-640 px) fed photo-sized JPEGs",
        ),
    )
}


@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` or the full run."""

    name: str
    workloads: tuple[str, ...]
    concurrency: tuple[int, ...]
    rate_fractions: tuple[float, ...]
    point_s: float
    latency_cap_s: float
    server_warmup_s: float
    engine_batches: tuple[int, ...]
    limit_time_s: float
    corpus_size: int
    ceiling_s: float
    grpc_images: int = 8


QUICK = Plan(
    name="quick",
    workloads=("mobilenet_v3_small-96",),
    concurrency=(1, 16, 64),
    rate_fractions=(0.5, 0.9),
    point_s=2.0,
    latency_cap_s=2.0,
    server_warmup_s=1.0,
    engine_batches=(1, 8, 32),
    limit_time_s=0.6,
    corpus_size=24,
    ceiling_s=2.0,
)
FULL = Plan(
    name="full",
    workloads=tuple(WORKLOADS),
    concurrency=(1, 8, 32, 64, 128),
    rate_fractions=(0.3, 0.6, 0.9),
    point_s=5.0,
    latency_cap_s=8.0,
    server_warmup_s=3.0,
    engine_batches=(1, 4, 8, 16, 32),
    limit_time_s=2.0,
    corpus_size=24,
    ceiling_s=4.0,
)


class Clock:
    """Elapsed time for progress lines."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        """Print ``[mm:ss] message`` to stderr."""
        elapsed = int(time.perf_counter() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when installed."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _point(target: Target, images: Sequence[bytes], spec: LoadSpec) -> dict[str, Any]:
    pool = spec.concurrency or spec.max_inflight
    sender = make_sender(target, images, spec.images_per_request, pool)
    await sender.start()
    cpu = time.process_time()
    try:
        result = await run_load(sender, spec)
    finally:
        await sender.close()
    report_ = result.to_json()
    report_["client_cpu_s"] = round(time.process_time() - cpu, 3)
    return report_


def point(
    target: Target,
    images: Sequence[bytes],
    spec: LoadSpec,
    server: ServerProcess | None = None,
) -> dict[str, Any]:
    """One measured load point: the loadgen JSON report plus client and server CPU time.

    ``server_cpu_ms_per_image`` is the server's CPU time (all its processes) over the whole
    point divided by every image answered in it (warm-up and tail included).
    """
    before = server.cpu_seconds() if server is not None else 0.0
    result: dict[str, Any] = run_async(_point(target, images, spec))
    if server is not None:
        cpu = server.cpu_seconds() - before
        answered = result["requests"] + result["warmup_excluded"] + result["tail"]
        images_answered = answered * result["images_per_request"]
        result["server_cpu_s"] = round(cpu, 3)
        result["server_cpu_ms_per_image"] = round(1000 * cpu / max(1, images_answered), 3)
    return result


def brief(report_: dict[str, Any]) -> str:
    """A one-line result."""
    lat = report_["latency_ok_ms"]
    codes = " ".join(f"{k}:{v}" for k, v in report_["status_counts"].items())
    p50 = "-" if lat["p50"] is None else f"{lat['p50']:.0f}"
    p99 = "-" if lat["p99"] is None else f"{lat['p99']:.0f}"
    rate = report_.get("bench_images_per_s", report_["images_per_s"])
    return f"{rate:8.1f} img/s  p50 {p50:>6} ms  p99 {p99:>6} ms  [{codes}]"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and package versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("kserve", "fastapi", "uvicorn", "mosec", "litserve", "aiohttp", "pillow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def batch_sizes(plan: Plan, device: str) -> tuple[int, ...]:
    """Engine batch sizes to measure: the plan's, plus 64 and 128 on a GPU."""
    if device.startswith("cuda"):
        return tuple(sorted({*plan.engine_batches, 64, 128}))
    return plan.engine_batches


def measure_limits(
    model_dir: Path, kinds: Sequence[str], plan: Plan, device: str, dtype: str, env: dict[str, str]
) -> dict[str, Any]:
    """Engine and decode limits from ``loadlib.limits`` in a subprocess."""
    command = [
        sys.executable, "-m", "loadlib.limits",
        "--model-dir", str(model_dir),
        "--device", device,
        "--dtype", dtype,
        "--batch-sizes", ",".join(str(b) for b in batch_sizes(plan, device)),
        "--min-time-s", str(plan.limit_time_s),
        "--corpus", str(plan.corpus_size),
        "--corpus-kinds", ",".join(kinds),
    ]  # fmt: skip
    child_env = {**os.environ, **env, "PYTHONPATH": str(LOAD_TESTS)}
    done = subprocess.run(
        command, capture_output=True, text=True, env=child_env, cwd=ROOT, check=False
    )
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"limits failed ({done.returncode}): {done.stderr[-2000:]}")
    limits: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return limits


def client_ceiling(plan: Plan, clock: Clock, logs: Path) -> dict[str, Any]:
    """The load generator against a trivial server, per corpus: the most it can drive."""
    port = free_port()
    server = ServerProcess(
        "trivial server",
        [sys.executable, "-m", "loadlib.trivial_server", str(port)],
        f"http://127.0.0.1:{port}/",
        logs / "trivial-server.log",
        env={"PYTHONPATH": str(LOAD_TESTS)},
        cwd=ROOT,
    )
    results: dict[str, Any] = {}
    with server:
        server.start(60)
        target = Target(f"http://127.0.0.1:{port}", "trivial", timeout_s=REQUEST_TIMEOUT_S)
        for kind in ("photos", "thumbs"):
            images = corpus.named(kind, plan.corpus_size)
            spec = LoadSpec(concurrency=64, duration_s=plan.ceiling_s, warmup_s=0.5)
            results[kind] = point(target, images, spec)
            cpu = results[kind]["client_cpu_s"]
            per_request_us = 1e6 * cpu / max(1, results[kind]["sent"])
            results[kind]["client_cpu_us_per_request"] = round(per_request_us, 1)
            clock.say(
                f"client ceiling ({kind}): {results[kind]['throughput_rps']:.0f} req/s, "
                f"~{per_request_us:.0f} µs client CPU per request"
            )
    return results


def measure_system(
    system: System,
    workloads: Sequence[Workload],
    model_dir: Path,
    plan: Plan,
    args: argparse.Namespace,
    env: dict[str, str],
    clock: Clock,
    logs: Path,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Start ``system`` once for the model, sweep every workload on it, stop it.

    Returns:
        ``{workload: {system key: result}}``; ours also adds its gRPC multi-image series
        (``ours-grpc``), measured on the same server.
    """
    model = model_dir.name
    settings = ServerSettings(model_dir, model, free_port(), free_port(), args.device, args.dtype)
    server = ServerProcess(
        system.key,
        system.command(settings),
        system.ready_url(settings),
        logs / f"{model}-{system.key}.log",
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    out: dict[str, dict[str, dict[str, Any]]] = {w.key: {} for w in workloads}
    with server:
        try:
            startup = server.start(args.startup_timeout)
        except RuntimeError as exc:
            clock.say(f"  {system.key}: did not start: {str(exc).splitlines()[0]}")
            return {w.key: {system.key: {"error": str(exc)[-3000:]}} for w in workloads}
        clock.say(f"  {system.key}: ready in {startup:.1f} s (pid {server.pid})")
        target = Target(
            f"http://127.0.0.1:{settings.http_port}",
            model,
            protocol=system.protocol,
            grpc_port=settings.grpc_port,
            timeout_s=REQUEST_TIMEOUT_S,
        )
        for workload in workloads:
            images = corpus.named(workload.corpus, plan.corpus_size)
            result = sweep(system.key, target, images, plan, clock, server, workload.key)
            result["startup_s"] = round(startup, 2)
            out[workload.key][system.key] = result
            wanted = workload.grpc_series or args.device.startswith("cuda")
            if system.key == "ours" and plan.grpc_images > 1 and wanted:
                grpc = replace(target, protocol="grpc")
                out[workload.key]["ours-grpc"] = sweep(
                    "ours-grpc",
                    grpc,
                    images,
                    plan,
                    clock,
                    server,
                    workload.key,
                    per_request=plan.grpc_images,
                    open_loop=False,
                )
    return out


def overloaded(result: dict[str, Any], rate: float, plan: Plan) -> bool:
    """An open-loop point past the system's capacity: sheds, drops or queues up.

    Not judged by the answered rate alone: over a few seconds a Poisson count at a low
    rate is too noisy for that.
    """
    p99 = result["latency_ok_ms"]["p99"]
    return bool(
        result["dropped"]
        or set(result["status_counts"]) - {"200"}
        or result["tail"] > max(10.0, 2.0 * rate)  # more than 2 s of arrivals still queued
        or (p99 is not None and p99 > 1000 * plan.latency_cap_s)
    )


def sweep(
    key: str,
    target: Target,
    images: Sequence[bytes],
    plan: Plan,
    clock: Clock,
    server: ServerProcess,
    workload: str,
    per_request: int = 1,
    open_loop: bool = True,
) -> dict[str, Any]:
    """Closed-loop concurrency sweep, then open-loop rates below the best throughput."""
    # Every image once (first calls are slow: lazy init, allocator), then load for a while.
    first = point(
        target,
        images,
        LoadSpec(
            concurrency=4,
            requests=max(4, math.ceil(len(images) / per_request)),
            images_per_request=per_request,
        ),
    )
    if first["status_counts"].get("200", 0) == 0:
        message = f"warm-up failed: {first['status_counts']} {first['errors']}"
        clock.say(f"  {key}: {message}")
        return {"error": message}
    warm = point(
        target,
        images,
        LoadSpec(concurrency=8, duration_s=plan.server_warmup_s, images_per_request=per_request),
    )
    closed: list[dict[str, Any]] = []
    previous_rps = max(1.0, warm["ok_rps"], first["ok_rps"])
    # Multi-image requests: as many images in flight as the single-image levels.
    levels = sorted({max(1, c // per_request) for c in plan.concurrency})
    for level in levels:
        # Closed loop: latency settles at about clients / throughput. Levels that would
        # wait longer than the cap are skipped (throughput has long saturated there);
        # the others warm up until the queue is in its steady state, and are measured
        # for long enough to see whole batches complete.
        expected_s = level / previous_rps
        if expected_s > plan.latency_cap_s:
            reason = f"expected latency {expected_s:.0f} s > {plan.latency_cap_s:.0f} s"
            closed.append({"concurrency": level, "skipped": reason})
            clock.say(f"  {key:13s} {workload} c={level:<4d} skipped: {reason}")
            continue
        spec = LoadSpec(
            concurrency=level,
            duration_s=max(plan.point_s, min(plan.latency_cap_s, 1.5 * expected_s)),
            warmup_s=min(plan.latency_cap_s, 0.5 + 1.2 * expected_s),
            drain_timeout_s=REQUEST_TIMEOUT_S,
            images_per_request=per_request,
        )
        result = point(target, images, spec, server)
        # Little's law when every request of the window was answered, else the count.
        result["bench_images_per_s"] = result.get("littles_images_per_s", result["images_per_s"])
        closed.append(result)
        previous_rps = max(1.0, result.get("littles_rps", result["ok_rps"]))
        clock.say(f"  {key:13s} {workload} c={level:<4d} {brief(result)}")
    opened: list[dict[str, Any]] = []
    measured = [r for r in closed if "bench_images_per_s" in r]
    best = max((r["bench_images_per_s"] / per_request for r in measured), default=0.0)
    for fraction in plan.rate_fractions if open_loop else ():
        rate = fraction * best
        if rate <= 0:
            break
        # Enough arrivals for a p99 worth the name at low rates (slow models), bounded.
        spec = LoadSpec(
            rate=rate,
            poisson=True,
            seed=0,
            duration_s=min(2 * plan.point_s, max(plan.point_s, 50 / rate)),
            warmup_s=1.0,
            max_inflight=512,
            drain_timeout_s=REQUEST_TIMEOUT_S,
        )
        result = point(target, images, spec, server)
        result["rate_fraction"] = fraction
        result["bench_images_per_s"] = result["images_per_s"]
        opened.append(result)
        clock.say(f"  {key:13s} {workload} {rate:7.1f}/s {brief(result)}")
        if overloaded(result, rate, plan):
            clock.say(f"  {key}: overloaded at {rate:.1f}/s; rates above skipped")
            break
    return {"closed": closed, "open": opened, "rss_bytes": server.rss_bytes()}


def resolve_device(requested: str) -> str:
    """``auto``: ``cuda:0`` when PyTorch sees a GPU (asked in a subprocess), else ``cpu``."""
    if requested == "cuda":
        return "cuda:0"
    if requested != "auto":
        return requested
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "cuda:0" if probe.stdout.strip() == "True" else "cpu"


def torch_threads(requested: str, device: str) -> int:
    """OMP/MKL threads for every server: ``auto`` is half the cores on CPU, default on GPU.

    On CPU the model shares the cores with decoding and HTTP; PyTorch's OpenMP threads spin
    at barriers, and one of them losing its core to a decode thread stalls the whole
    operator. With as many threads as cores, servers that decode in other processes
    (mosec) collapse (measured on 2 cores: 18 img/s instead of 465 at 16 clients), so every
    system gets the same, saner setting. ``0`` leaves the libraries' defaults.
    """
    if requested != "auto":
        return int(requested)
    if device.startswith("cuda"):
        return 0
    return max(1, len(os.sched_getaffinity(0)) // 2)


def run_bench(args: argparse.Namespace, plan: Plan, clock: Clock) -> dict[str, Any]:
    """Everything the bench measures, as one results object."""
    workloads = [WORKLOADS[k] for k in (args.workloads or plan.workloads)]
    wanted = args.systems or list(SYSTEMS)
    systems = []
    for key in wanted:
        system = SYSTEMS[key]
        if system.available():
            systems.append(system)
        else:
            clock.say(f"{key}: {system.requires} is not installed (uv run --group peers); skipped")
    threads = torch_threads(args.torch_threads, args.device)
    env = {}
    if threads:
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = dt.datetime.now(dt.UTC)
    logs = RESULTS / f"logs-{started:%Y%m%d-%H%M%S}"
    results: dict[str, Any] = {
        "version": 1,
        "plan": asdict(plan),
        "started": started.isoformat(timespec="seconds"),
        "command": args.command_line,
        "note": args.note,
        "machine": machine_info(),
        "settings": {
            "device": args.device,
            "dtype": args.dtype,
            "torch_threads": threads or None,
            "max_batch_size": MAX_BATCH_SIZE,
            "max_batch_delay_ms": MAX_BATCH_DELAY_MS,
            "request_timeout_s": REQUEST_TIMEOUT_S,
        },
        "systems": {
            s.key: {
                "label": s.label,
                "description": s.description,
                "protocol": s.protocol,
                "batching": s.batching,
            }
            for s in systems
        },
        "loadavg_start": os.getloadavg(),
        "workloads": [],
    }
    if "ours" in results["systems"] and plan.grpc_images > 1:
        results["systems"]["ours-grpc"] = {
            "label": f"ours, gRPC ×{plan.grpc_images}",
            "description": f"the same server, driven over gRPC with {plan.grpc_images} images "
            "per request (raw_input_contents): the high-throughput route; concurrency counts "
            f"requests, so c clients keep up to {plan.grpc_images}×c images in flight",
            "protocol": "grpc",
            "batching": True,
        }
    clock.say(f"bench ({plan.name}): {len(workloads)} workload(s), {len(systems)} system(s)")
    results["client_ceiling"] = client_ceiling(plan, clock, logs)
    model_names = sorted({w.model for w in workloads}, key=lambda m: list(MODELS).index(m))
    clock.say(f"model directories: {', '.join(model_names)}")
    model_dirs = prepare_models(model_names)
    for model in model_names:
        mine = [w for w in workloads if w.model == model]
        kinds = sorted({w.corpus for w in mine})
        clock.say(f"{model}: limits (engine per batch size; decode of {', '.join(kinds)})")
        limits = measure_limits(model_dirs[model], kinds, plan, args.device, args.dtype, env)
        results.setdefault("environment", limits["environment"])
        entries: dict[str, dict[str, Any]] = {
            w.key: {
                "key": w.key,
                "model": w.model,
                "corpus": w.corpus,
                "corpus_description": corpus.describe(corpus.named(w.corpus, plan.corpus_size)),
                "about": w.about,
                "limits": {
                    "engine": limits["engine"],
                    "decode": limits["decode"][w.corpus],
                    "torch_threads": limits["environment"]["torch_threads"],
                },
                "loadavg": os.getloadavg(),
                "systems": {},
            }
            for w in mine
        }
        for system in systems:
            targets = [w for w in mine if w.systems is None or system.key in w.systems]
            if not targets:
                continue
            clock.say(f"{model}: {system.label}")
            measured = measure_system(
                system, targets, model_dirs[model], plan, args, env, clock, logs
            )
            for key, value in measured.items():
                entries[key]["systems"].update(value)
        results["workloads"].extend(entries.values())
    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["elapsed_s"] = round(time.perf_counter() - clock.started, 1)
    results["loadavg_end"] = os.getloadavg()
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one overhead-bound workload, 3 concurrency levels (< 5 min)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda:0 when PyTorch sees a GPU, else cpu), cpu, cuda[:N]",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16",
    )
    parser.add_argument(
        "--systems",
        type=lambda s: s.split(","),
        metavar="A,B",
        help=f"subset of {','.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--workloads",
        type=lambda s: s.split(","),
        metavar="A,B",
        help=f"subset of {','.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--torch-threads",
        default="auto",
        metavar="N|auto",
        help="OMP/MKL threads of every server and of the limits; auto: half the cores on CPU, "
        "library default on CUDA; 0: library defaults",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="per server, s")
    parser.add_argument(
        "--note", help="a line shown at the top of docs/benchmarks.md (also with --report)"
    )
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md and img/ are written"
    )
    parser.add_argument("--no-docs", action="store_true", help="only write the results JSON")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="render docs from an earlier results file; measure nothing",
    )
    return parser


def interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so every server started is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    shown = list(sys.argv[1:] if argv is None else argv)
    if "--note" in shown:  # the note is shown on its own
        index = shown.index("--note")
        del shown[index : index + 2]
    args.command_line = "uv run --group peers load-tests/bench.py " + shlex.join(shown)
    for key in args.systems or []:
        if key not in SYSTEMS:
            parser.error(f"--systems: unknown {key!r}; known: {', '.join(SYSTEMS)}")
    if args.torch_threads != "auto" and not args.torch_threads.isdigit():
        parser.error("--torch-threads: a number or auto")
    for key in args.workloads or []:
        if key not in WORKLOADS:
            parser.error(f"--workloads: unknown {key!r}; known: {', '.join(WORKLOADS)}")
    if args.report is not None:
        results = json.loads(args.report.read_text(encoding="utf-8"))
        if args.note is not None:  # notes written after the run, e.g. on its findings
            results["note"] = args.note
        print(f"wrote {', '.join(str(p) for p in publish(results, args.docs))}")
        return 0
    plan = QUICK if args.quick else FULL
    clock = Clock()
    signal.signal(signal.SIGTERM, interrupt)  # SIGTERM too stops the servers started
    args.device = resolve_device(args.device)
    try:
        results = run_bench(args, plan, clock)
    except KeyboardInterrupt:
        clock.say("interrupted: every server started was stopped")
        return 130
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")[:15]
    path = RESULTS / f"bench-{plan.name}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    clock.say(f"results: {path}")
    if not args.no_docs:
        for page in publish(results, args.docs):
            clock.say(f"wrote {page}")
    return 0


def publish(results: dict[str, Any], docs: Path) -> list[Path]:
    """``docs/benchmarks.json`` (the data), then the page and plots rendered from it."""
    data = docs / "benchmarks.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(results, separators=(",", ":")) + "\n", encoding="utf-8")
    return [data, *report.write(results, docs, data)]


if __name__ == "__main__":
    sys.exit(main())

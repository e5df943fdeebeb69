r"""Where a loaded predictor's CPU goes: per thread role, per image answered.

Drives a closed-loop load (as ``loadgen.py`` does) and reads the server's per-thread CPU
time from ``/proc/<pid>/task`` at the start and end of the measured window. Threads are
grouped by the names the predictor gives them (``predictor/runtime/threads.py``): the main thread
runs the event loop (HTTP, KServe's data plane, codec, batcher), ``decode-*`` the decode
pool, ``engine-*`` the device workers, ``grpc*`` and the rest everything else. The images
run are read from the server's own ``predictor_batch_size`` histogram over the same window.

    uv run load-tests/cpu_split.py --serve mobilenet_v3_small-96 --thumbnails --concurrency 64
    uv run load-tests/cpu_split.py --pid 1234 --url http://127.0.0.1:8080 --concurrency 32

``--serve NAME`` starts gpu-predictor on one of the bench's models (random weights, batch
32, 5 ms window, as ``bench.py`` runs it) and stops it by PID at the end; ``--pid`` and
``--url`` attach to a server already running on this machine. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
from loadlib import corpus
from loadlib.cli import HelpFormatter
from loadlib.procs import ServerProcess, cpu_seconds_of, free_port, stat_fields
from loadlib.promtext import sample_sum
from loadlib.protocols import PROTOCOLS, Target, make_sender
from loadlib.runner import LoadSpec, run_load
from loadlib.systems import LOAD_TESTS, SYSTEMS, ServerSettings
from loadlib.workload import MODELS, prepare_models

ROOT = LOAD_TESTS.parent
ROLES = ("event loop", "decode", "engine", "other")


def role(name: str, main_thread: bool) -> str:
    """The role of a server thread, from its kernel name."""
    if main_thread:
        return "event loop"
    if name.startswith("decode-"):
        return "decode"
    if name.startswith("engine-"):
        return "engine"
    return "other"


def thread_cpu(pid: int, proc: Path = Path("/proc")) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every thread of ``pid``, with its kernel name."""
    out: dict[int, tuple[str, float]] = {}
    for task in (proc / str(pid) / "task").iterdir():
        try:
            seconds = cpu_seconds_of(stat_fields(task))
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (name, seconds)
    return out


def by_role(
    pid: int, before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per role between two :func:`thread_cpu` readings."""
    spent = dict.fromkeys(ROLES, 0.0)
    for tid, (name, seconds) in after.items():
        spent[role(name, tid == pid)] += seconds - before.get(tid, (name, 0.0))[1]
    return spent


def machine_busy_s(proc: Path = Path("/proc")) -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O), all cores."""
    ticks = [int(v) for v in (proc / "stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def images_run(metrics_text: str) -> tuple[float, float]:
    """``(images, batches)`` run so far, summed over models, from a ``/metrics`` page."""
    images = sample_sum(metrics_text, "predictor_batch_size_sum") or 0.0
    batches = sample_sum(metrics_text, "predictor_batch_size_count") or 0.0
    return images, batches


@dataclass(frozen=True)
class Reading:
    """One instant: server threads, server images and batches, client and machine CPU, clock."""

    threads: dict[int, tuple[str, float]]
    images: float
    batches: float
    client_cpu_s: float
    machine_busy_s: float
    wall_s: float


def read(pid: int, url: str) -> Reading:
    """Take a :class:`Reading` (blocking: run it in a thread from the event loop)."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as reply:  # noqa: S310
        images, batches = images_run(reply.read().decode())
    return Reading(
        thread_cpu(pid), images, batches, time.process_time(), machine_busy_s(), time.monotonic()
    )


async def measure(
    pid: int, target: Target, images: Sequence[bytes], concurrency: int, warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Load the server; read it after the warm-up and again ``duration_s`` later."""
    spec = LoadSpec(concurrency=concurrency, duration_s=warmup_s + duration_s + 1.0)
    sender = make_sender(target, images, 1, concurrency)
    await sender.start()
    try:
        load = asyncio.ensure_future(run_load(sender, spec))
        await asyncio.sleep(warmup_s)
        first = await asyncio.to_thread(read, pid, target.url)
        await asyncio.sleep(duration_s)
        last = await asyncio.to_thread(read, pid, target.url)
        result = await load
    finally:
        await sender.close()
    seconds = last.wall_s - first.wall_s
    done = last.images - first.images
    roles = by_role(pid, first.threads, last.threads)
    codes = result.to_json()["status_counts"]
    per_image = {name: round(1000 * s / max(1.0, done), 3) for name, s in roles.items()}
    return {
        "window_s": round(seconds, 2),
        "images": int(done),
        "images_per_s": round(done / seconds, 1),
        "mean_batch_size": round(done / max(1.0, last.batches - first.batches), 2),
        "status_counts": codes,
        "cores": {name: round(s / seconds, 3) for name, s in roles.items()},
        "cpu_ms_per_image": per_image,
        "client_cores": round((last.client_cpu_s - first.client_cpu_s) / seconds, 3),
        "machine_cores_busy": round((last.machine_busy_s - first.machine_busy_s) / seconds, 3),
        "machine_cores": os.cpu_count(),
    }  # fmt: skip


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a markdown table."""
    total = sum(report["cpu_ms_per_image"].values())
    rows = [
        f"{report['images_per_s']:,.0f} images/s over {report['window_s']} s "
        f"(mean batch {report['mean_batch_size']}, answers {report['status_counts']})",
        "",
        "| thread role | cores busy | CPU ms per image | share |",
        "|---|---|---|---|",
    ]
    for name in ROLES:
        ms = report["cpu_ms_per_image"][name]
        share = 100 * ms / total if total else 0.0
        rows.append(f"| {name} | {report['cores'][name]:.2f} | {ms:.3f} | {share:.0f}% |")
    cores = sum(report["cores"].values())
    rows.append(f"| **server** | **{cores:.2f}** | **{total:.3f}** | 100% |")
    rows.append(f"| load generator (this process) | {report['client_cores']:.2f} | | |")
    rows.append(
        f"| whole machine (kernel included) | {report['machine_cores_busy']:.2f} "
        f"of {report['machine_cores']} | | |"
    )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpu_split", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=HelpFormatter,
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--serve", choices=sorted(MODELS), help="start ours on a bench model")
    where.add_argument("--pid", type=int, help="attach to this running predictor")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="with --pid")
    parser.add_argument("--model", help="model name (default: the --serve one, or the only one)")
    parser.add_argument("--protocol", choices=[p for p in PROTOCOLS if p != "grpc"], default="v1")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=3.0, help="s of load before reading")
    parser.add_argument("--duration", type=float, default=10.0, help="s between the readings")
    parser.add_argument("--thumbnails", action="store_true", help="thumbnail corpus (96-256 px)")
    parser.add_argument("--images", type=Path, metavar="DIR", help="your images, not the corpus")
    parser.add_argument("--devices", default="cpu", help="with --serve")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report here too")
    return parser


def run(args: argparse.Namespace, pid: int, url: str, model: str) -> dict[str, Any]:
    if args.images is not None:
        images = corpus.load_dir(args.images)
    else:
        images = corpus.named("thumbs" if args.thumbnails else "photos")
    target = Target(url, model, protocol=args.protocol)
    print(f"loading {url} ({model}, pid {pid}) with {args.concurrency} clients...", file=sys.stderr)
    report: dict[str, Any] = asyncio.run(
        measure(pid, target, images, args.concurrency, args.warmup, args.duration)
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        print("cpu_split: needs Linux's /proc", file=sys.stderr)
        return 2
    if args.pid is not None:
        model = args.model or asyncio.run(loadgen.discover_model(args.url, 10.0))
        report = run(args, args.pid, args.url, model)
    else:
        model_dir = prepare_models([args.serve])[args.serve]
        settings = ServerSettings(
            model_dir, args.serve, free_port(), free_port(), args.devices, "auto"
        )
        ours = SYSTEMS["ours"]
        log = Path(tempfile.mkdtemp(prefix="cpu-split-")) / "server.log"
        env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        command, ready = ours.command(settings), ours.ready_url(settings)
        with ServerProcess("ours", command, ready, log, env, cwd=ROOT) as server:
            server.start()
            assert server.pid is not None
            url = f"http://127.0.0.1:{settings.http_port}"
            report = run(args, server.pid, url, args.serve)
    print(format_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

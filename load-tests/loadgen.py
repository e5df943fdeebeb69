r"""A load generator for gpu-predictor and any KServe-style image server (hey/wrk class).

Closed loop (``--concurrency N`` users, each sending as soon as it is answered) or open
loop (``--rate R`` requests per second, evenly spaced or ``--poisson``; arrivals never wait
for the server: in-flight requests are bounded by ``--max-inflight`` and the excess is
counted as dropped). Stops by itself after ``--requests N`` and/or ``--duration S``.

    uv run load-tests/loadgen.py --url http://127.0.0.1:8080 --model resnet18 \
        --concurrency 32 --duration 20
    uv run load-tests/loadgen.py --model resnet18 --protocol grpc --rate 200 --poisson \
        --duration 30 --json out.json

Images: a cached corpus of generated photo-like JPEGs (640x480 up to 4032x3024), or your
own with ``--images DIR``. Progress goes to stderr once a second, the summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from loadlib import corpus
from loadlib.cli import HelpFormatter
from loadlib.protocols import PROTOCOLS, Target, make_sender
from loadlib.runner import LoadSpec, RunResult, format_summary, run_load

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    target = parser.add_argument_group("target")
    target.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    target.add_argument("--model", help="model name (default: the only one /v1/models lists)")
    target.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="v1",
        help=(
            "v1: raw JPEG body; v1-json: {instances: [{image_bytes: {b64}}]}; "
            "v2: BYTES [K] base64 JSON; grpc: ModelInfer with raw_input_contents"
        ),
    )
    target.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (host of --url)")
    target.add_argument("--path", help="post to this route instead of the protocol's own")
    target.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra header (gRPC: metadata), repeatable",
    )
    target.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    load = parser.add_argument_group("load (one of --concurrency / --rate)")
    mode = load.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop with N concurrent users")
    mode.add_argument("--rate", type=float, help="open loop at R requests per second")
    load.add_argument("--poisson", action="store_true", help="Poisson arrivals (open loop)")
    load.add_argument("--seed", type=int, default=0, help="seed of the Poisson schedule")
    load.add_argument(
        "--max-inflight",
        type=int,
        default=1000,
        help="open loop: in-flight bound; arrivals beyond it are dropped",
    )
    load.add_argument("--requests", type=int, help="stop after N requests")
    load.add_argument("--duration", type=float, help="stop after S seconds (after warm-up)")
    load.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="seconds of load before measuring (answers then are not counted)",
    )
    images = parser.add_argument_group("images")
    images.add_argument("--images", type=Path, help="a folder of images instead of the corpus")
    images.add_argument(
        "--corpus",
        type=int,
        default=24,
        help="generated corpus size (cached under load-tests/.corpus/)",
    )
    images.add_argument(
        "--thumbnails",
        action="store_true",
        help="generate thumbnails (96-256 px) instead of photo-sized images",
    )
    images.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        metavar="K",
        help="images per request (v1 instances / v2 BYTES [K])",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the JSON report here")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    out.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the single checked request sent before the run",
    )
    return parser


def spec_from(args: argparse.Namespace) -> LoadSpec:
    """The load spec of parsed arguments (raises ValueError on inconsistent bounds)."""
    if args.poisson and args.rate is None:
        raise ValueError("--poisson needs --rate")
    return LoadSpec(
        concurrency=args.concurrency,
        rate=args.rate,
        poisson=args.poisson,
        requests=args.requests,
        duration_s=args.duration,
        warmup_s=args.warmup,
        max_inflight=args.max_inflight,
        seed=args.seed,
        images_per_request=args.images_per_request,
        drain_timeout_s=args.timeout,
    )


def headers_from(pairs: Sequence[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {pair!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    return headers


async def discover_model(url: str, timeout_s: float) -> str:
    """The single model a server lists at ``/v1/models``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url.rstrip("/") + "/v1/models") as reply,
    ):
        body = await reply.json(content_type=None)
    models = body.get("models", []) if isinstance(body, dict) else []
    if len(models) != 1:
        raise ValueError(f"{url}/v1/models lists {models}: name one with --model")
    return str(models[0])


async def run(
    target: Target,
    images: Sequence[bytes],
    spec: LoadSpec,
    progress: bool = True,
    preflight: bool = True,
) -> RunResult:
    """Build the requests, check one, apply the load; the recorded run."""
    pool = spec.concurrency or min(spec.max_inflight, 1024)
    sender = make_sender(target, images, spec.images_per_request, pool)
    await sender.start()
    try:
        if preflight:
            code = await sender.send(0)
            if code != "200":
                detail = sender.samples.get(code, "")
                raise RuntimeError(f"preflight request answered {code}: {detail}")
            sender.samples.clear()
        result = await run_load(sender, spec, sys.stderr if progress else None)
    finally:
        await sender.close()
    result.info.update({"url": target.url, "model": target.model, "protocol": target.protocol})
    return result


def run_coroutine(coro: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Run on uvloop where installed and wanted (grpc.aio keeps asyncio's own loop)."""
    if use_uvloop:
        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        except ImportError:
            pass
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = spec_from(args)
        headers = headers_from(args.header)
    except ValueError as exc:
        parser.error(str(exc))
    if args.images is not None:
        images = corpus.load_dir(args.images)
    else:
        images = corpus.named("thumbs" if args.thumbnails else "photos", args.corpus)
    print(f"images: {corpus.describe(images)}", file=sys.stderr)
    model = args.model or run_coroutine(discover_model(args.url, args.timeout), True)
    target = Target(
        url=args.url,
        model=model,
        protocol=args.protocol,
        grpc_port=args.grpc_port,
        path=args.path,
        headers=headers,
        timeout_s=args.timeout,
    )
    try:
        result = run_coroutine(
            run(target, images, spec, not args.quiet, not args.no_preflight),
            use_uvloop=args.protocol != "grpc",
        )
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    report = result.to_json()
    print(format_summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The limits a server is measured against, in process, without HTTP.

* engine limit: :class:`predictor.runtime.engine.Engine` (built as the server builds it,
  TorchScript trace included for classifiers) running ready-made batches of prepared
  images (a detector's of mixed sizes, as the corpus comes), per batch size: what the model
  itself can do on this device;
* decode limit: the model's task preparing the corpus (``Task.prepare``, what the server's
  decode pool runs) in a pool of one thread per core: what turning photos into model
  inputs can do on this CPU.

Run as ``python -m loadlib.limits`` (with ``load-tests`` on ``PYTHONPATH``) so the bench's
own process never holds a model; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loadlib import corpus


def engine_limits(
    model_dir: Path,
    device: str,
    dtype: str,
    batch_sizes: Sequence[int],
    pixels: Sequence[Any],
    min_time_s: float,
    rounds: int = 3,
) -> list[dict[str, float]]:
    """Images per second of the engine at each batch size (inputs already decoded).

    Each size runs ``rounds`` rounds of at least ``min_time_s / rounds`` seconds (and at
    least one batch); the best round counts, as a limit is what the engine *can* do, and
    another process taking the CPU for a moment only ever makes a round slower.
    """
    from predictor.store.manifest import discover
    from predictor.store.weights import load_module
    from predictor.tasks.registry import engine_for

    spec = discover(model_dir)[0]
    module = load_module(spec)
    engine = engine_for(spec, module, device, dtype, max(batch_sizes))
    engine.warmup(sorted(set(batch_sizes)))
    rows = []
    for size in batch_sizes:
        batch = [pixels[i % len(pixels)] for i in range(size)]
        best_s = math.inf
        for _ in range(rounds):
            runs, started = 0, time.perf_counter()
            while True:
                engine.infer(batch)
                runs += 1
                elapsed = time.perf_counter() - started
                if elapsed >= min_time_s / rounds:
                    break
            best_s = min(best_s, elapsed / runs)
        rows.append({"batch_size": size, "img_per_s": size / best_s, "ms_per_batch": 1000 * best_s})
        print(
            f"  engine batch {size:3d}: {size / best_s:8.1f} img/s ({1000 * best_s:.1f} ms/batch)",
            file=sys.stderr,
            flush=True,
        )
    return rows


def decode_limit(
    model_dir: Path, images: Sequence[bytes], workers: int, min_time_s: float, rounds: int = 3
) -> dict[str, float]:
    """Images per second of the task's preparation in a pool of ``workers`` threads.

    Best of ``rounds`` passes over the corpus (each repeated to ``min_time_s / rounds``).
    """
    task, limits = _task(model_dir)

    def one(data: bytes) -> int:
        return int(task.prepare(data, limits).pixels.shape[0])

    for data in images:  # warm: code paths, allocator
        one(data)
    best_rate = 0.0
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(rounds):
            done, started = 0, time.perf_counter()
            while True:
                list(pool.map(one, images))
                done += len(images)
                elapsed = time.perf_counter() - started
                if elapsed >= min_time_s / rounds:
                    break
            best_rate = max(best_rate, done / elapsed)
    single_s = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        for data in images:
            one(data)
        single_s = min(single_s, (time.perf_counter() - started) / len(images))
    print(
        f"  decode: {best_rate:8.1f} img/s with {workers} threads "
        f"({1000 * single_s:.2f} ms per image on one thread)",
        file=sys.stderr,
        flush=True,
    )
    return {"img_per_s": best_rate, "workers": workers, "ms_per_image": 1000 * single_s}


def _task(model_dir: Path) -> tuple[Any, Any]:
    """The model's task and the decode limits the bench uses."""
    from predictor.store.manifest import discover
    from predictor.tasks.images import DecodeLimits
    from predictor.tasks.registry import task_for

    return task_for(discover(model_dir)[0]), DecodeLimits(40_000_000)


def decoded_pixels(model_dir: Path, images: Sequence[bytes]) -> list[Any]:
    """The corpus as the engine's input items, with the model's default parameters."""
    task, limits = _task(model_dir)
    parameters = task.defaults()
    return [task.batch_input(task.prepare(data, limits), parameters) for data in images]


def environment(device: str) -> dict[str, Any]:
    """Versions and the device as torch sees them."""
    import torch
    import torchvision

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "device": device,
        "device_name": "cpu",
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """The engine limit, and the decode limit per corpus, for one model directory."""
    workers = args.decode_workers or len(os.sched_getaffinity(0))
    decode = {}
    pixels: list[Any] = []
    for kind in args.corpus_kinds:
        images = corpus.named(kind, args.corpus)
        print(f"  {kind}: {corpus.describe(images)}", file=sys.stderr, flush=True)
        decode[kind] = decode_limit(args.model_dir, images, workers, args.min_time_s)
        pixels = pixels or decoded_pixels(args.model_dir, images)
    engine = engine_limits(
        args.model_dir, args.device, args.dtype, args.batch_sizes, pixels, args.min_time_s
    )
    return {"engine": engine, "decode": decode, "environment": environment(args.device)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--min-time-s", type=float, default=2.0)
    parser.add_argument("--corpus", type=int, default=24, help="images per corpus")
    parser.add_argument(
        "--corpus-kinds", type=lambda s: s.split(","), default=["photos"], help="photos,thumbs"
    )
    parser.add_argument("--decode-workers", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

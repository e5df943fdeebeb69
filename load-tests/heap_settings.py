"""How glibc's heap settings change an engine's speed: one engine, three settings, side by side.

    uv run load-tests/heap_settings.py --model shapes --corpus scenes
    uv run load-tests/heap_settings.py --model resnet18 --corpus photos

Each setting runs in its own process (``mallopt`` must come before the first allocation),
with one torch thread, on the same prepared batches: glibc's defaults, the 256 KiB fixed
mmap threshold the hardened edge first used, and what the server sets
(:func:`predictor.runtime.budget.limit_heap_arenas`). Prints ms per image by batch size.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from collections.abc import Sequence

SETTINGS = {
    "glibc defaults": "plain",
    "mmap threshold 256 KiB": "small",
    "server (limit_heap_arenas)": "server",
}


def measure(
    model: str, corpus_kind: str, batch_sizes: Sequence[int], mode: str
) -> dict[int, float]:
    """Ms per image of the model's engine at each batch size, under heap setting ``mode``."""
    from predictor.runtime.budget import limit_heap_arenas

    if mode == "small":
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    elif mode == "server":
        limit_heap_arenas()
    import torch
    from loadlib import corpus
    from loadlib.workload import prepare_models

    from predictor.store.manifest import discover
    from predictor.store.weights import load_module
    from predictor.tasks.images import DecodeLimits
    from predictor.tasks.registry import engine_for, task_for

    torch.set_num_threads(1)
    spec = discover(prepare_models([model])[model])[0]
    task = task_for(spec)
    engine = engine_for(spec, load_module(spec), "cpu", "auto", max(batch_sizes))
    parameters = task.defaults()
    limits = DecodeLimits(40_000_000)
    items = [
        task.batch_input(task.prepare(d, limits), parameters) for d in corpus.named(corpus_kind, 24)
    ]
    result = {}
    for size in batch_sizes:
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        for batch in batches:  # warm: shapes, allocator
            engine.infer(batch)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for batch in batches:
                engine.infer(batch)
            best = min(best, (time.perf_counter() - started) / len(items))
        result[size] = 1000 * best
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="shapes", help="a bench model (loadlib.workload)")
    parser.add_argument("--corpus", default="scenes", help="photos, thumbs or scenes")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated")
    parser.add_argument("--mode", choices=sorted(SETTINGS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.mode:
        print(json.dumps(measure(args.model, args.corpus, sizes, args.mode)))
        return 0
    print(f"{args.model} on {args.corpus}, one torch thread: ms per image by batch size")
    print(f"{'heap setting':30s}" + "".join(f"{'batch ' + str(s):>12s}" for s in sizes))
    for label, mode in SETTINGS.items():
        print(f"  measuring: {label}", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--model", args.model, "--corpus", args.corpus,
                   "--batch-sizes", args.batch_sizes, "--mode", mode]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label:30s}" + "".join(f"{row[str(s)]:12.2f}" for s in sizes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

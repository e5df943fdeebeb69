"""A memory burst against a running server: what the hardened edge's memory budget is for.

    gpu-predictor serve --model-dir models/digits &
    uv run load-tests/memory_burst.py --url http://127.0.0.1:8080

At once: 50 concurrent 10 MB bodies that are not images, and 4 v2 requests of eight
6300 x 6300 16-bit PNGs (~300 MB each decoded). Prints the answers by status code and the
server's resident memory (its own /metrics) before, at the peak while the burst runs, and
1, 5 and 15 s after. Bounded: 54 requests, then it stops. 127.0.0.1 only, as every load
test here.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence

import httpx
import numpy as np
from loadlib.corpus import ramp_png16


def resident_mib(url: str) -> float:
    """The server's resident memory (``process_resident_memory_bytes``) in MiB."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^process_resident_memory_bytes (\S+)", text, re.MULTILINE)
    if found is None:
        raise SystemExit("the server's /metrics has no process_resident_memory_bytes")
    return float(found.group(1)) / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="digits")
    args = parser.parse_args(argv)
    url, model = args.url.rstrip("/"), args.model
    if not re.match(r"^http://127\.0\.0\.1:\d+$", url):
        parser.error("--url must be http://127.0.0.1:PORT (load tests stay on this machine)")
    body = np.random.default_rng(9).integers(0, 255, 10 * 2**20, dtype=np.uint8).tobytes()
    png = base64.b64encode(ramp_png16(6300, 6300)).decode()
    pngs = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [8], "data": [png] * 8}]}

    def post_body() -> int:
        headers = {"content-type": "image/png"}
        return httpx.post(
            f"{url}/v1/models/{model}:predict", content=body, headers=headers, timeout=120
        ).status_code

    def post_pngs() -> int:
        return httpx.post(f"{url}/v2/models/{model}/infer", json=pngs, timeout=120).status_code

    before = resident_mib(url)
    print(f"resident memory before: {before:.0f} MiB", flush=True)
    peak = before
    with concurrent.futures.ThreadPoolExecutor(54) as pool:
        futures = [pool.submit(post_body) for _ in range(50)] + [
            pool.submit(post_pngs) for _ in range(4)
        ]
        while not all(f.done() for f in futures):
            peak = max(peak, resident_mib(url))
            time.sleep(0.1)
        codes = Counter(f.result() for f in futures)
    print(f"answers: {dict(sorted(codes.items()))}; peak {peak:.0f} MiB", flush=True)
    started = time.monotonic()
    for mark in (1, 5, 15):
        time.sleep(max(0.0, started + mark - time.monotonic()))
        now = resident_mib(url)
        print(f"{mark:2d} s after: {now:.0f} MiB ({now / before - 1:+.1%})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

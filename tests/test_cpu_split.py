"""cpu_split: per-thread CPU by role, from /proc and the server's own batch histogram."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "load-tests"))

import cpu_split

from predictor.runtime.threads import name_current_thread
from tests.support import DIGITS, PredictorProcess

linux_only = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")


def test_roles_follow_the_thread_names_the_predictor_gives() -> None:
    assert cpu_split.role("python", main_thread=True) == "event loop"
    assert cpu_split.role("decode-1", main_thread=False) == "decode"
    assert cpu_split.role("engine-cuda:0_0", main_thread=False) == "engine"
    assert cpu_split.role("grpc_0", main_thread=False) == "other"


def test_images_and_batches_are_summed_over_models() -> None:
    page = "\n".join(
        [
            "# TYPE predictor_batch_size histogram",
            'predictor_batch_size_bucket{le="1.0",model="a"} 2.0',
            'predictor_batch_size_count{model="a"} 3.0',
            'predictor_batch_size_sum{model="a"} 10.0',
            'predictor_batch_size_count{model="b"} 1.0',
            'predictor_batch_size_sum{model="b"} 4.0',
        ]
    )
    assert cpu_split.images_run(page) == (14.0, 4.0)


@linux_only
def test_a_named_busy_thread_is_seen_with_its_name_and_cpu_time() -> None:
    stop = threading.Event()
    ready = threading.Event()

    def spin() -> None:
        name_current_thread("decode-test")
        ready.set()
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        assert ready.wait(10)
        before = cpu_split.thread_cpu(os.getpid())
        assert "decode-test" in {name for name, _ in before.values()}
        deadline = time.monotonic() + 10
        spent = dict.fromkeys(cpu_split.ROLES, 0.0)
        while spent["decode"] < 0.05 and time.monotonic() < deadline:  # a few clock ticks
            spent = cpu_split.by_role(os.getpid(), before, cpu_split.thread_cpu(os.getpid()))
    finally:
        stop.set()
        thread.join()
    assert spent["decode"] >= 0.05  # the spinning thread, found by its name
    assert spent["engine"] == 0.0
    assert set(spent) == set(cpu_split.ROLES)


@linux_only
def test_live_split_of_the_demo_server(digits_server: PredictorProcess, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    args = [
        "--pid", str(digits_server.process.pid), "--url", digits_server.url,
        "--images", str(DIGITS / "samples"), "--concurrency", "8",
        "--warmup", "0.5", "--duration", "1.5", "--json", str(out),
    ]  # fmt: skip
    assert cpu_split.main(args) == 0
    report = json.loads(out.read_text())
    assert report["images"] > 0
    assert set(report["status_counts"]) == {"200"}
    assert report["mean_batch_size"] >= 1
    # The server's own threads carry names: decode and engine time is attributed to them.
    assert report["cpu_ms_per_image"]["decode"] > 0
    assert report["cpu_ms_per_image"]["engine"] > 0
    assert report["cpu_ms_per_image"]["event loop"] > 0

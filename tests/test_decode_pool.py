"""DecodePool: results and errors come back to the event loop; cancelled jobs are skipped."""

from __future__ import annotations

import asyncio
import threading

import pytest

from predictor.runtime.decode_pool import DecodePool


def test_results_errors_and_skipped_cancellations() -> None:
    pool = DecodePool(2)
    gate = threading.Event()
    ran: list[int] = []

    def work(value: int) -> int:
        if value == 0:
            assert gate.wait(10)
        if value < 0:
            raise ValueError("negative")
        ran.append(value)
        return value * 2

    async def scenario() -> None:
        blockers = [pool.run(work, 0), pool.run(work, 0)]  # both threads busy
        cancelled = pool.run(work, 7)
        kept = pool.run(work, 3)
        failing = pool.run(work, -1)
        cancelled.cancel()
        gate.set()
        assert await asyncio.gather(*blockers) == [0, 0]
        assert await kept == 6
        with pytest.raises(ValueError, match="negative"):
            await failing
        assert 7 not in ran  # cancelled before it started: never run

    asyncio.run(asyncio.wait_for(scenario(), 20))
    pool.shutdown()


def test_work_runs_off_the_event_loop_thread() -> None:
    pool = DecodePool(1, name="probe")

    async def scenario() -> str:
        return await pool.run(lambda _: threading.current_thread().name, None)

    assert asyncio.run(scenario()).startswith("probe-")
    pool.shutdown()

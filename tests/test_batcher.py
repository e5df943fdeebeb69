"""DynamicBatcher units: batches form by size or by deadline, every item ends once.

Workers are gated with threading.Event: a test decides when a batch may finish, so nothing
depends on sleeps or machine speed.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from predictor.errors import DeadlineExceeded, Draining, InferenceFailed, Overloaded
from predictor.runtime.batcher import DynamicBatcher
from predictor.runtime.workers import Worker

FAR = 1e9  # a deadline that never passes


class GatedRunner:
    """A batch runner that records its batches and waits for permission to finish."""

    def __init__(self, open_gate: bool = True) -> None:
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.fail_on: object = None
        self.short_by = 0

    def __call__(self, payloads: list[Any]) -> list[Any]:
        self.batches.append(list(payloads))
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        if self.fail_on is not None and self.fail_on in payloads:
            raise RuntimeError("injected failure")
        rows = [p * 10 for p in payloads]
        return rows[: len(rows) - self.short_by]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def make(
    runners: Sequence[GatedRunner],
    max_batch: int = 4,
    delay_s: float = 10.0,
    capacity: int = 64,
) -> DynamicBatcher:
    workers = [Worker(f"dev{i}", 0, r) for i, r in enumerate(runners)]
    batcher = DynamicBatcher(workers, max_batch, delay_s, capacity)
    batcher.start()
    return batcher


def submit_all(
    batcher: DynamicBatcher, payloads: Sequence[Any], deadline_s: float | None = None
) -> list[asyncio.Future[Any]]:
    """Reserve room for and submit every payload; ``deadline_s`` from now, or never."""
    deadline = FAR if deadline_s is None else asyncio.get_running_loop().time() + deadline_s
    ticket = batcher.reserve(len(payloads))
    return [ticket.submit(p, deadline) for p in payloads]


async def entered(runner: GatedRunner) -> None:
    assert await asyncio.to_thread(runner.entered.wait, 10)
    runner.entered.clear()


def test_full_batch_closes_at_once_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = make([runner], max_batch=4, delay_s=1000.0)
        futures = submit_all(batcher, [1, 2, 3, 4])
        assert await asyncio.gather(*futures) == [10, 20, 30, 40]
        assert runner.batches == [[1, 2, 3, 4]]
        await batcher.stop()

    run(scenario())


def test_partial_batch_closes_when_the_first_items_delay_passes() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        delay = 0.05
        batcher = make([runner], max_batch=8, delay_s=delay)
        loop = asyncio.get_running_loop()
        start = loop.time()
        decoding = batcher.reserve(1)  # an image still on its way keeps the window open
        futures = submit_all(batcher, [1, 2, 3])
        assert await asyncio.gather(*futures) == [10, 20, 30]
        assert loop.time() - start >= delay * 0.99  # not dispatched before the window closed
        assert runner.batches == [[1, 2, 3]]
        decoding.release()
        await batcher.stop()

    run(scenario())


def test_batch_closes_at_once_when_nothing_else_is_on_its_way() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = make([runner], max_batch=8, delay_s=1000.0)
        decoding = batcher.reserve(1)
        first = submit_all(batcher, [1, 2])
        await asyncio.sleep(0)
        assert runner.batches == []  # an image is still decoding: the window stays open
        late = decoding.submit(3, FAR)  # the last one arrives
        assert await asyncio.gather(*first, late) == [10, 20, 30]
        assert runner.batches == [[1, 2, 3]]
        lone = submit_all(batcher, [4])  # a lone request does not wait for the window
        assert await lone[0] == 40
        abandoned = batcher.reserve(1)
        pending = submit_all(batcher, [5])
        abandoned.release()  # a decode failed: nothing else is coming, close the batch
        assert await pending[0] == 50
        await batcher.stop()

    run(scenario())


def test_next_batch_collects_while_the_device_is_busy() -> None:
    async def scenario() -> None:
        runner = GatedRunner(open_gate=False)
        batcher = make([runner], max_batch=8, delay_s=0.0)
        first = submit_all(batcher, [1])
        await entered(runner)  # batch [1] is on the device, blocked
        rest = submit_all(batcher, [2, 3, 4, 5, 6])
        runner.gate.set()
        assert await asyncio.gather(*first, *rest) == [10, 20, 30, 40, 50, 60]
        assert runner.batches == [[1], [2, 3, 4, 5, 6]]
        await batcher.stop()

    run(scenario())


def test_cancelled_items_are_skipped_and_uncounted() -> None:
    async def scenario() -> None:
        runner = GatedRunner(open_gate=False)
        batcher = make([runner], max_batch=8, delay_s=0.0)
        first = submit_all(batcher, [1])
        await entered(runner)
        rest = submit_all(batcher, [2, 3, 4])
        assert batcher.depth == 3
        rest[1].cancel()
        await asyncio.sleep(0)  # let the done-callback run
        assert batcher.depth == 2
        runner.gate.set()
        assert await first[0] == 10
        assert await rest[0] == 20
        assert await rest[2] == 40
        assert runner.batches == [[1], [2, 4]]
        assert batcher.admitted == 0
        await batcher.stop()

    run(scenario())


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = make([runner], max_batch=2, capacity=4)
        held = batcher.reserve(3)
        with pytest.raises(Overloaded) as refused:
            batcher.reserve(2)
        assert refused.value.status == 503
        assert refused.value.retry_after_s is not None
        held.release()
        batcher.reserve(4).release()
        assert batcher.admitted == 0
        await batcher.stop()

    run(scenario())


def test_failing_batch_fails_only_its_items_and_the_next_batch_succeeds() -> None:
    async def scenario() -> None:
        runner = GatedRunner(open_gate=False)
        runner.fail_on = 2
        batcher = make([runner], max_batch=2, delay_s=0.0)
        first = submit_all(batcher, [1])
        await entered(runner)
        bad = submit_all(batcher, [2, 3])  # forms the failing batch [2, 3]
        runner.gate.set()
        assert await first[0] == 10
        outcomes = await asyncio.gather(*bad, return_exceptions=True)
        assert all(isinstance(o, InferenceFailed) for o in outcomes)
        assert all(o.status == 500 and "Traceback" not in str(o) for o in outcomes)  # type: ignore[union-attr]
        assert batcher.consecutive_failures == 1
        good = submit_all(batcher, [4, 5])
        assert await asyncio.gather(*good) == [40, 50]
        assert batcher.consecutive_failures == 0
        await batcher.stop()

    run(scenario())


def test_wrong_result_count_fails_the_batch() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        runner.short_by = 1
        batcher = make([runner], max_batch=2, delay_s=0.0)
        outcomes = await asyncio.gather(*submit_all(batcher, [1, 2]), return_exceptions=True)
        assert all(isinstance(o, InferenceFailed) for o in outcomes)
        await batcher.stop()

    run(scenario())


def test_two_devices_both_run_batches_at_the_same_time() -> None:
    async def scenario() -> None:
        runners = [GatedRunner(open_gate=False), GatedRunner(open_gate=False)]
        batcher = make(runners, max_batch=2, delay_s=0.0)
        futures = submit_all(batcher, [1, 2, 3, 4])
        await entered(runners[0])
        await entered(runners[1])  # both devices busy at once
        for runner in runners:
            runner.gate.set()
        assert sorted(await asyncio.gather(*futures)) == [10, 20, 30, 40]
        assert len(runners[0].batches) == 1
        assert len(runners[1].batches) == 1
        await batcher.stop()

    run(scenario())


def test_expired_items_are_answered_504_and_never_run() -> None:
    async def scenario() -> None:
        runner = GatedRunner(open_gate=False)
        batcher = make([runner], max_batch=8, delay_s=0.0)
        first = submit_all(batcher, [1])
        await entered(runner)
        expiring = submit_all(batcher, [2, 3], deadline_s=0.01)
        keeper = submit_all(batcher, [4])
        await asyncio.wait(expiring, timeout=0.05)  # let the deadline pass while queued
        runner.gate.set()
        outcomes = await asyncio.gather(*expiring, return_exceptions=True)
        assert all(isinstance(o, DeadlineExceeded) and o.status == 504 for o in outcomes)
        assert await keeper[0] == 40
        assert await first[0] == 10
        assert runner.batches == [[1], [4]]
        await batcher.stop()

    run(scenario())


def test_items_that_cannot_finish_before_their_deadline_are_not_started() -> None:
    async def scenario() -> None:
        runner = GatedRunner()
        batcher = make([runner], max_batch=4, delay_s=0.0)
        assert await asyncio.gather(*submit_all(batcher, [1])) == [10]
        assert batcher.expected_batch_s > 0  # learned from the batch that ran
        batcher.expected_batch_s = 5.0  # as if a batch took 5 s on this device
        hopeless = submit_all(batcher, [2], deadline_s=1.0)
        fine = submit_all(batcher, [3], deadline_s=60.0)
        with pytest.raises(DeadlineExceeded, match="would pass before inference finishes"):
            await hopeless[0]
        assert await fine[0] == 30
        assert runner.batches == [[1], [3]]
        await batcher.stop()

    run(scenario())


def test_every_item_gets_exactly_one_outcome_under_churn() -> None:
    async def scenario() -> None:
        rng = random.Random(7)
        runners = [GatedRunner(), GatedRunner()]
        runners[1].fail_on = 13
        batcher = make(runners, max_batch=4, delay_s=0.001, capacity=400)
        futures = submit_all(batcher, list(range(300)))
        cancelled = {i for i in range(300) if rng.random() < 0.2}
        for i in cancelled:
            futures[i].cancel()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        ran = [p for runner in runners for batch in runner.batches for p in batch]
        assert len(ran) == len(set(ran))  # nothing ran twice
        for i, outcome in enumerate(outcomes):
            if i in cancelled and i not in ran:
                assert isinstance(outcome, asyncio.CancelledError)
            elif isinstance(outcome, InferenceFailed):
                assert i in ran
            elif not isinstance(outcome, asyncio.CancelledError):
                assert outcome == i * 10
        await batcher.drain()
        assert batcher.admitted == 0
        assert batcher.running_batches == 0
        await batcher.stop()

    run(scenario())


def test_close_refuses_new_work_and_stop_answers_what_is_queued() -> None:
    async def scenario() -> None:
        runner = GatedRunner(open_gate=False)
        batcher = make([runner], max_batch=8, delay_s=0.0)
        first = submit_all(batcher, [1])
        await entered(runner)
        queued = submit_all(batcher, [2])
        batcher.close()
        with pytest.raises(Draining):
            batcher.reserve(1)
        runner.gate.set()
        assert await first[0] == 10
        await batcher.drain()  # the queued item still runs while draining
        assert await queued[0] == 20
        late = GatedRunner(open_gate=False)
        stopped = make([late], max_batch=8, delay_s=1000.0)
        pending = submit_all(stopped, [5])
        await stopped.stop()
        with pytest.raises(Draining):
            await pending[0]
        await batcher.stop()

    run(scenario())

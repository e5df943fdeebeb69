"""Dynamic batching: concurrent single-image submissions become device-sized batches.

One :class:`DynamicBatcher` per model. Callers on the event loop :meth:`~DynamicBatcher.reserve`
room for their images (a full queue refuses at once with 503) and get a :class:`Ticket`,
then :meth:`Ticket.submit` each image and await its future. A collector task forms a
batch whenever a device worker is free: the batch closes when it holds ``max_batch_size``
items or when ``max_batch_delay`` has passed since its oldest item arrived, whichever comes
first, or at once when no further image is on its way (none reserved and still decoding):
a lone request never waits for a window that nothing else will fill. Waiting is on an event
and a timer, never a polling loop. Each worker runs its batches on its own thread, so the
next batch collects while the current one computes.

Every item ends in exactly one outcome (result, error, expiry or cancellation), set through
"if not done" guards; cancelled items are skipped, expired ones answered 504 without running.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

from predictor.errors import DeadlineExceeded, Draining, InferenceFailed, Overloaded
from predictor.runtime.ticket import Ticket
from predictor.runtime.workers import (
    BatchObserver,
    QueuedItem,
    Worker,
    fail,
    run_timed,
    settle,
)

log = logging.getLogger(__name__)


class DynamicBatcher:
    """Collects items into batches and dispatches them to free device workers.

    Args:
        workers: one per device; each batch goes to whichever is free.
        max_batch_size: a batch closes when it holds this many items.
        max_batch_delay_s: ... or when its oldest item has waited this long.
        capacity: items admitted but not yet running (reserved, queued); more is a 503.
        observer: optional receiver of batch measurements.
    """

    def __init__(
        self,
        workers: Sequence[Worker],
        max_batch_size: int,
        max_batch_delay_s: float,
        capacity: int,
        observer: BatchObserver | None = None,
    ) -> None:
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        self.workers = list(workers)
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.capacity = capacity
        self.observer = observer
        self.consecutive_failures = 0
        self.batches_dispatched = 0
        #: Moving average of a batch's run time: items that would miss their deadline
        #: before a batch could finish are answered 504 at once instead of wasting the device.
        self.expected_batch_s = 0.0
        self._queue: deque[QueuedItem] = deque()
        self._live = 0  # queued items whose future is not done
        self._reserved = 0
        self._running_batches = 0
        self._closed = False
        # asyncio primitives bind to the running loop on first use (Python >= 3.10).
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._idle_workers: asyncio.Queue[Worker] = asyncio.Queue()
        for worker in self.workers:
            self._idle_workers.put_nowait(worker)
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the collector on the running event loop."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")
        self._task.add_done_callback(self._on_collector_exit)

    def _on_collector_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        # A bug killed the collector: nothing would ever run again. Fail what is queued and
        # report unhealthy so that Kubernetes restarts the pod.
        log.critical("batch collector died", exc_info=task.exception())
        self.close()
        self.consecutive_failures = 1 << 30
        self._fail_queued(InferenceFailed("batch collector failed; see server log"))

    def close(self) -> None:
        """Refuse new reservations (503 draining); queued and running items still finish."""
        self._closed = True

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            item = self._queue.popleft()
            item.queued = False
            fail(item, error)
        self._live = 0

    async def drain(self) -> None:
        """Wait until nothing is reserved, queued or running (the one drain wait)."""
        while not self._is_settled():
            self._settled.clear()
            await self._settled.wait()

    async def stop(self) -> None:
        """Stop the collector; items still queued are answered 503 (draining)."""
        self.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_queued(Draining("server is shutting down"))
        for worker in self.workers:
            worker.executor.shutdown(wait=False, cancel_futures=True)

    # -- admission ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Items queued and not yet in a batch (reserved-but-decoding ones excluded)."""
        return self._live

    @property
    def admitted(self) -> int:
        """Items counted against ``capacity``: reserved plus queued."""
        return self._live + self._reserved

    @property
    def running_batches(self) -> int:
        """Batches currently on a device."""
        return self._running_batches

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: new reservations are refused (draining)."""
        return self._closed

    def reserve(self, count: int) -> Ticket:
        """Take room for ``count`` items, or refuse at once (503: draining, or queue full)."""
        if self._closed:
            raise Draining("server is shutting down; retry on another replica")
        if self.admitted + count > self.capacity:
            raise Overloaded(
                f"queue full ({self.admitted} of {self.capacity} images waiting); retry shortly"
            )
        self._reserved += count
        return Ticket(count, self._submit, self._release)

    def _release(self, count: int) -> None:
        self._reserved -= count
        if self._reserved == 0:
            self._wake.set()  # nothing more on its way: the collector may close the batch
        self._check_settled()

    def _submit(self, payload: Any, deadline: float, request_id: str | None) -> asyncio.Future[Any]:
        """Queue one item whose slot a :class:`Ticket` held."""
        if self._task is None:
            raise RuntimeError("start() the batcher first")
        self._reserved -= 1
        loop = asyncio.get_running_loop()
        item = QueuedItem(payload, loop.create_future(), deadline, loop.time(), request_id)
        item.future.add_done_callback(lambda _future: self._on_item_done(item))
        self._queue.append(item)
        self._live += 1
        if self._live == 1 or self._live >= self.max_batch_size or self._reserved == 0:
            self._wake.set()
        return item.future

    def _on_item_done(self, item: QueuedItem) -> None:
        # Only a cancellation can finish an item while it is queued; results and errors
        # are set after it left the queue, where _live was already decremented.
        if item.queued:
            item.queued = False
            self._live -= 1
            self._check_settled()

    # -- collection and dispatch -------------------------------------------------------------

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            worker = await self._idle_workers.get()
            while True:
                self._drop_dead_head(loop.time())
                if self._live == 0:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                close_at = self._queue[0].enqueued + self.max_batch_delay_s
                full = self._live >= self.max_batch_size
                if full or self._reserved == 0 or loop.time() >= close_at:
                    break
                self._wake.clear()
                timer = loop.call_at(close_at, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
            batch = self._take(loop.time())
            if batch:
                self._dispatch(worker, batch, loop)
            else:
                self._idle_workers.put_nowait(worker)

    def _drop_dead_head(self, now: float) -> None:
        while self._queue and (self._queue[0].future.done() or self._queue[0].deadline <= now):
            self._discard(self._queue.popleft(), now)

    def _discard(self, item: QueuedItem, now: float) -> None:
        if not item.queued:  # cancelled while queued: already uncounted
            return
        item.queued = False
        self._live -= 1
        waited_ms = (now - item.enqueued) * 1000
        if item.deadline <= now:
            reason = f"deadline passed after {waited_ms:.0f} ms in the queue"
        else:
            reason = (
                f"deadline would pass before inference finishes (waited {waited_ms:.0f} ms; "
                f"a batch takes ~{self.expected_batch_s * 1000:.0f} ms)"
            )
        fail(item, DeadlineExceeded(reason))

    def _take(self, now: float) -> list[QueuedItem]:
        batch: list[QueuedItem] = []
        horizon = now + self.expected_batch_s
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done() or item.deadline <= horizon:
                self._discard(item, now)
                continue
            item.queued = False
            self._live -= 1
            batch.append(item)
        self._check_settled()
        return batch

    def _dispatch(
        self, worker: Worker, batch: list[QueuedItem], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._running_batches += 1
        self.batches_dispatched += 1
        now = loop.time()
        waits = [now - item.enqueued for item in batch]
        self._observe(lambda observer: observer.batch_started(len(batch), waits))
        payloads = [item.payload for item in batch]
        running = loop.run_in_executor(worker.executor, run_timed, worker.run, payloads)
        running.add_done_callback(lambda done: self._finish(worker, batch, done))

    def _observe(self, report: Callable[[BatchObserver], None]) -> None:
        """Report to the observer; a failing observer never breaks serving."""
        if self.observer is None:
            return
        try:
            report(self.observer)
        except Exception:
            log.exception("batch observer failed")

    def _finish(
        self,
        worker: Worker,
        batch: list[QueuedItem],
        done: asyncio.Future[tuple[Collection[Any], float]],
    ) -> None:
        self._running_batches -= 1
        self._idle_workers.put_nowait(worker)
        ok, seconds = settle(worker, batch, done)
        if ok:
            self.consecutive_failures = 0
            if self.expected_batch_s == 0.0:
                self.expected_batch_s = seconds
            else:
                self.expected_batch_s += 0.2 * (seconds - self.expected_batch_s)
        else:
            self.consecutive_failures += 1
        self._observe(lambda observer: observer.batch_finished(worker.name, seconds, ok))
        self._check_settled()

    def _is_settled(self) -> bool:
        return self._live == 0 and self._reserved == 0 and self._running_batches == 0

    def _check_settled(self) -> None:
        if self._is_settled():
            self._settled.set()

"""Dynamic batching: concurrent single-image submissions become device-sized batches.

One :class:`DynamicBatcher` per model. Callers on the event loop :meth:`~DynamicBatcher.reserve`
room for their images (a full queue refuses at once with 503), then
:meth:`~DynamicBatcher.submit` each image and await its future. A collector task forms a
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
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from predictor.errors import DeadlineExceeded, Draining, InferenceFailed, Overloaded
from predictor.threads import name_current_thread

log = logging.getLogger(__name__)

#: Runs one batch of payloads on a device and returns one result row per payload.
RunBatch = Callable[[list[Any]], Collection[Any]]


class BatchObserver(Protocol):
    """Receives batch-level measurements (implemented by :mod:`predictor.metrics`)."""

    def batch_started(self, size: int, queue_waits_s: Sequence[float]) -> None:
        """A batch of ``size`` items left the queue after the given waits."""

    def batch_finished(self, device: str, seconds: float, ok: bool) -> None:
        """A batch finished on ``device`` after ``seconds`` of inference."""


@dataclass
class Worker:
    """A device worker: a batch runner and the single thread it runs on.

    Attributes:
        device: the device it runs on, e.g. ``cuda:0``.
        replica: 0 for the first engine on that device, 1 for a second one...
        run: the batch runner, called on the worker's thread only.
    """

    device: str
    replica: int
    run: RunBatch
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"engine-{self.name}", initializer=name_current_thread
        )

    @property
    def name(self) -> str:
        """The ``device`` metric label: the device, suffixed ``/N`` for a further replica."""
        return self.device if self.replica == 0 else f"{self.device}/{self.replica}"


@dataclass(eq=False)
class _Item:
    payload: Any
    future: asyncio.Future[Any]
    deadline: float
    enqueued: float
    request_id: str | None
    queued: bool = True


class Reservation:
    """Room for ``count`` images in the batcher.

    Taken before decoding, so decode work is bounded too. Each
    :meth:`DynamicBatcher.submit` uses one slot; :meth:`release` frees the unused rest
    (safe to call more than once).
    """

    def __init__(self, batcher: DynamicBatcher, count: int) -> None:
        self._batcher = batcher
        self.remaining = count

    def release(self) -> None:
        """Give back the slots not used by a submit."""
        count, self.remaining = self.remaining, 0
        self._batcher._release(count)


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
        self._queue: deque[_Item] = deque()
        self._live = 0  # queued items whose future is not done
        self._reserved = 0
        self._running_batches = 0
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._idle_workers: asyncio.Queue[Worker] | None = None
        self._settled: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the collector on the running event loop."""
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._idle_workers = asyncio.Queue()
        for worker in self.workers:
            self._idle_workers.put_nowait(worker)
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
        while self._queue:
            item = self._queue.popleft()
            item.queued = False
            _fail(item, InferenceFailed("batch collector failed; see server log"))
        self._live = 0

    def close(self) -> None:
        """Refuse new reservations (503 draining); queued and running items still finish."""
        self._closed = True

    async def drain(self) -> None:
        """Wait until nothing is reserved, queued or running."""
        assert self._settled is not None, "start() first"
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
        while self._queue:
            item = self._queue.popleft()
            item.queued = False
            _fail(item, Draining("server is shutting down"))
        self._live = 0
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

    def reserve(self, count: int) -> Reservation:
        """Take room for ``count`` items, or refuse at once.

        Raises:
            Draining: the batcher is closed.
            Overloaded: fewer than ``count`` free slots (503 with Retry-After).
        """
        if self._closed:
            raise Draining("server is shutting down; retry on another replica")
        if self.admitted + count > self.capacity:
            raise Overloaded(
                f"queue full ({self.admitted} of {self.capacity} images waiting); retry shortly"
            )
        self._reserved += count
        return Reservation(self, count)

    def _release(self, count: int) -> None:
        self._reserved -= count
        if self._reserved == 0 and self._wake is not None:
            self._wake.set()  # nothing more on its way: the collector may close the batch
        self._check_settled()

    def submit(
        self,
        payload: Any,
        deadline: float,
        reservation: Reservation,
        request_id: str | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one item under a reservation.

        Args:
            payload: what the worker's ``run`` receives for this item.
            deadline: ``loop.time()`` after which the item is answered 504, never run.
            reservation: the reservation this item uses one slot of.
            request_id: for logs.

        Returns:
            A future resolved with the item's result row or an error.
        """
        assert self._wake is not None, "start() first"
        if reservation.remaining <= 0:
            raise RuntimeError("reservation exhausted")
        reservation.remaining -= 1
        self._reserved -= 1
        loop = asyncio.get_running_loop()
        item = _Item(payload, loop.create_future(), deadline, loop.time(), request_id)
        item.future.add_done_callback(lambda _future: self._on_item_done(item))
        self._queue.append(item)
        self._live += 1
        if self._live == 1 or self._live >= self.max_batch_size or self._reserved == 0:
            self._wake.set()
        return item.future

    def _on_item_done(self, item: _Item) -> None:
        # Only a cancellation can finish an item while it is queued; results and errors
        # are set after it left the queue, where _live was already decremented.
        if item.queued:
            item.queued = False
            self._live -= 1
            self._check_settled()

    # -- collection and dispatch -------------------------------------------------------------

    async def _collect(self) -> None:
        assert self._wake is not None
        assert self._idle_workers is not None
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

    def _discard(self, item: _Item, now: float) -> None:
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
        _fail(item, DeadlineExceeded(reason))

    def _take(self, now: float) -> list[_Item]:
        batch: list[_Item] = []
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
        self, worker: Worker, batch: list[_Item], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._running_batches += 1
        self.batches_dispatched += 1
        now = loop.time()
        self._observe("batch_started", len(batch), [now - item.enqueued for item in batch])
        payloads = [item.payload for item in batch]
        running = loop.run_in_executor(worker.executor, _timed, worker.run, payloads)
        running.add_done_callback(lambda done: self._finish(worker, batch, done))

    def _observe(self, event: str, *args: Any) -> None:
        """Report to the observer; a failing observer never breaks serving."""
        if self.observer is None:
            return
        try:
            getattr(self.observer, event)(*args)
        except Exception:
            log.exception("batch observer failed on %s", event)

    def _finish(
        self,
        worker: Worker,
        batch: list[_Item],
        done: asyncio.Future[tuple[Collection[Any], float]],
    ) -> None:
        assert self._idle_workers is not None
        self._running_batches -= 1
        self._idle_workers.put_nowait(worker)
        error: BaseException | None = None
        seconds = 0.0
        if done.cancelled():
            error = Draining("server stopped before this batch ran")
        elif done.exception() is not None:
            error = done.exception()
        else:
            rows, seconds = done.result()
            if len(rows) != len(batch):
                error = RuntimeError(f"engine returned {len(rows)} results for {len(batch)} items")
        if error is None:
            self.consecutive_failures = 0
            if self.expected_batch_s == 0.0:
                self.expected_batch_s = seconds
            else:
                self.expected_batch_s += 0.2 * (seconds - self.expected_batch_s)
            for item, row in zip(batch, rows, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
        else:
            self.consecutive_failures += 1
            ids = [item.request_id or "-" for item in batch]
            log.error(
                "batch of %d on %s failed (request ids: %s)",
                len(batch),
                worker.name,
                ", ".join(ids),
                exc_info=error,
            )
            for item, request_id in zip(batch, ids, strict=True):
                _fail(item, InferenceFailed(f"inference failed; request id {request_id}"))
        self._observe("batch_finished", worker.name, seconds, error is None)
        self._check_settled()

    def _is_settled(self) -> bool:
        return self._live == 0 and self._reserved == 0 and self._running_batches == 0

    def _check_settled(self) -> None:
        if self._settled is not None and self._is_settled():
            self._settled.set()


def _timed(run: RunBatch, payloads: list[Any]) -> tuple[Collection[Any], float]:
    start = time.perf_counter()
    rows = run(payloads)
    return rows, time.perf_counter() - start


def _fail(item: _Item, error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)

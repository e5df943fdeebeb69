"""Device workers and the items they run: a worker is a batch runner on its own thread.

The batcher (:mod:`predictor.runtime.batcher`) forms batches of :class:`QueuedItem`; a
:class:`Worker` runs one at a time on its thread; :func:`settle` gives every item of a
finished batch exactly one outcome (its row, or the batch's failure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from predictor.errors import Draining, InferenceFailed
from predictor.runtime.threads import name_current_thread

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
class QueuedItem:
    """One submitted item: its payload, future, deadline, and whether it is still queued."""

    payload: Any
    future: asyncio.Future[Any]
    deadline: float
    enqueued: float
    request_id: str | None
    queued: bool = True


def run_timed(run: RunBatch, payloads: list[Any]) -> tuple[Collection[Any], float]:
    """Run one batch; its rows and the seconds it took (on the worker's thread)."""
    start = time.perf_counter()
    rows = run(payloads)
    return rows, time.perf_counter() - start


def fail(item: QueuedItem, error: BaseException) -> None:
    """Fail ``item`` unless it already has an outcome."""
    if not item.future.done():
        item.future.set_exception(error)


def settle(
    worker: Worker,
    batch: Sequence[QueuedItem],
    done: asyncio.Future[tuple[Collection[Any], float]] | Future[Any],
) -> tuple[bool, float]:
    """Give every item of a finished batch its outcome; whether it succeeded, and its seconds.

    A batch that failed (an exception, a cancelled run, or a wrong number of rows) fails
    each of its items with a generic 500 that carries the item's request id, and logs the
    traceback once with all the ids.
    """
    error: BaseException | None = None
    seconds = 0.0
    rows: Collection[Any] = ()
    if done.cancelled():
        error = Draining("server stopped before this batch ran")
    elif done.exception() is not None:
        error = done.exception()
    else:
        rows, seconds = done.result()
        if len(rows) != len(batch):
            error = RuntimeError(f"engine returned {len(rows)} results for {len(batch)} items")
    if error is None:
        for item, row in zip(batch, rows, strict=True):
            if not item.future.done():
                item.future.set_result(row)
        return True, seconds
    ids = [item.request_id or "-" for item in batch]
    log.error(
        "batch of %d on %s failed (request ids: %s)",
        len(batch),
        worker.name,
        ", ".join(ids),
        exc_info=error,
    )
    for item, request_id in zip(batch, ids, strict=True):
        fail(item, InferenceFailed(f"inference failed; request id {request_id}"))
    return False, seconds

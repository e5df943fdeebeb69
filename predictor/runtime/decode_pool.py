"""A lean thread pool for running blocking work from the event loop.

``loop.run_in_executor`` builds a ``concurrent.futures.Future`` (with its lock and
condition) per call and chains it to an asyncio future; on the demo model that was 15% of
the event loop's time. Here a job is a tuple on a ``SimpleQueue`` and the result comes back
through one ``call_soon_threadsafe``. Cancelled jobs that have not started are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from predictor.runtime.threads import name_current_thread

T = TypeVar("T")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[Any], Any], Any]


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while running: nobody waits for it
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class DecodePool:
    """``workers`` daemon threads running functions of one argument.

    Args:
        workers: number of threads.
        name: thread name prefix.
    """

    def __init__(self, workers: int, name: str = "decode") -> None:
        self.workers = workers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[[Any], T], argument: Any) -> asyncio.Future[T]:
        """Schedule ``function(argument)``; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, function, argument))
        return future

    def _work(self) -> None:
        name_current_thread()
        while (job := self._jobs.get()) is not None:
            loop, future, function, argument = job
            if future.cancelled():
                continue
            try:
                outcome: tuple[Any, BaseException | None] = (function(argument), None)
            except Exception as exc:
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, future, *outcome)

    def shutdown(self) -> None:
        """Let every thread finish its current job and exit."""
        for _ in self._threads:
            self._jobs.put(None)

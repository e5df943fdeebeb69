"""Admission tickets: room in a batcher's queue, held from before decoding to submission."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Ticket:
    """Room for ``count`` items in a batcher, and the way to submit them.

    Taken before decoding (:meth:`DynamicBatcher.reserve`), so decode work is bounded too.
    Each :meth:`submit` uses one slot; :meth:`release` gives back the unused rest (safe to
    call more than once, and after every slot was used).

    Args:
        count: the slots held.
        submit: queues one item (the batcher's own ``_submit``).
        give_back: returns unused slots (the batcher's own ``_release``).
    """

    def __init__(
        self,
        count: int,
        submit: Callable[[Any, float, str | None], asyncio.Future[Any]],
        give_back: Callable[[int], None],
    ) -> None:
        self.remaining = count
        self._submit = submit
        self._give_back = give_back

    def submit(
        self, payload: Any, deadline: float, request_id: str | None = None
    ) -> asyncio.Future[Any]:
        """Queue one item under this ticket.

        Args:
            payload: what the worker's ``run`` receives for this item.
            deadline: ``loop.time()`` after which the item is answered 504, never run.
            request_id: for logs.

        Returns:
            A future resolved with the item's result row or an error.

        Raises:
            RuntimeError: every slot of the ticket is used.
        """
        if self.remaining <= 0:
            raise RuntimeError("ticket exhausted")
        self.remaining -= 1
        return self._submit(payload, deadline, request_id)

    def release(self) -> None:
        """Give back the slots not used by a submit."""
        count, self.remaining = self.remaining, 0
        if count:
            self._give_back(count)

"""The memory budget: bytes of request bodies and decoded pixels in flight, per process.

Per-request limits (body size, pixels per image, images per request) bound one request;
this bounds them all together, so that a burst of large bodies or huge images cannot grow
the process past its pod's memory limit (an OOM kill loses every request in flight). Each
request body is accounted from its ``Content-Length`` before it is read, each image from
its header before it is decoded (width x height x bytes per pixel, with the working copies
decoding and converting make). What does not fit is refused at once with 503 and
``Retry-After`` (it would fit later), or 413 when it could never fit.

When the budget empties after a burst, memory only reference cycles still hold is
collected and freed memory is handed back to the system (``malloc_trim``): glibc keeps
freed pages of its arenas otherwise, and the pod's resident memory would stay at its peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from predictor.errors import Overloaded, TooLarge

MIB = 1 << 20
#: Used when no container memory limit is found.
DEFAULT_BYTES = 2048 * MIB
#: A burst this large (or larger) is followed by a trim when the budget empties.
_TRIM_AFTER_BYTES = 32 * MIB
_TRIM_EVERY_S = 1.0


class MemoryFull(Overloaded):
    """503: the memory budget is taken by requests in flight; retry shortly."""

    reason = "memory"


class MemoryBudget:
    """A thread-safe count of bytes in flight against a limit.

    Args:
        limit_bytes: the most bytes held at once.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.peak_bytes = 0
        self._since_trim = 0
        self._last_trim = 0.0
        self._lock = threading.Lock()

    def take(self, count: int, what: str) -> None:
        """Hold ``count`` bytes for ``what`` (a body, an image), or refuse.

        Raises:
            TooLarge: ``count`` exceeds the whole budget (413: it never fits).
            MemoryFull: not enough is free now (503 with Retry-After).
        """
        if count > self.limit_bytes:
            raise TooLarge(
                f"{what} needs {count // MIB} MiB; the server's budget for requests in flight "
                f"is {self.limit_bytes // MIB} MiB"
            )
        with self._lock:
            if self.used_bytes + count > self.limit_bytes:
                raise MemoryFull(
                    f"memory for requests in flight is taken ({self.used_bytes // MIB} of "
                    f"{self.limit_bytes // MIB} MiB); retry shortly"
                )
            self.used_bytes += count
            self.peak_bytes = max(self.peak_bytes, self.used_bytes)
            self._since_trim = max(self._since_trim, self.used_bytes)

    def give(self, count: int) -> None:
        """Return ``count`` bytes; trims the heap when a burst has ended."""
        with self._lock:
            self.used_bytes -= count
            trim = (
                self.used_bytes == 0
                and self._since_trim >= _TRIM_AFTER_BYTES
                and time.monotonic() - self._last_trim >= _TRIM_EVERY_S
            )
            if trim:
                self._since_trim = 0
                self._last_trim = time.monotonic()
        if trim:
            threading.Thread(target=trim_heap, name="trim", daemon=True).start()

    @contextlib.contextmanager
    def hold(self, count: int, what: str) -> Iterator[None]:
        """Hold ``count`` bytes for the duration of a ``with`` block."""
        self.take(count, what)
        try:
            yield
        finally:
            self.give(count)


class Held:
    """Bytes one holder (a request body, a decode) took from a budget, given back at once.

    Args:
        budget: the budget (None: nothing is accounted).
        what: what holds them, for the 503 message (``this request body``...).
    """

    def __init__(self, budget: MemoryBudget | None, what: str) -> None:
        self._budget = budget
        self._what = what
        self.count = 0

    def take(self, count: int) -> None:
        """Take ``count`` more bytes (MemoryFull or TooLarge when they do not fit)."""
        if self._budget is not None:
            self._budget.take(count, self._what)
            self.count += count

    def give_back(self) -> None:
        """Give back everything taken."""
        if self._budget is not None and self.count:
            self._budget.give(self.count)
            self.count = 0


def trim_heap() -> None:
    """Free what only reference cycles hold, then hand freed heap back (glibc).

    A failed request's exception, traceback and frames can hold its body in a cycle until a
    full collection, which a quiet server may not run for a long time.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def limit_heap_arenas(
    count: int = 2, mmap_threshold: int = 32 * MIB, trim_threshold: int = 128 * MIB
) -> None:
    """Make glibc's heap give memory back without slowing the engines down.

    By default glibc grows one arena per thread (up to 8 per core): with few arenas, freed
    memory is shared instead of stranded per thread. Blocks above ``mmap_threshold`` (a
    decoded photo's float working copy, a huge body) get their own mapping, returned to the
    system when freed; below it (request bodies, most tensors) they come from the arenas,
    and after a burst :func:`trim_heap` hands the freed pages back. The trim threshold is
    raised so the top of the heap is not given back and taken again on every free.

    A small mmap threshold returns memory sooner but costs every large tensor a fresh
    mapping and its page faults: at 256 KiB, engines ran 25-90% slower on CPU
    (``load-tests/heap_settings.py`` measures it; docs/performance.md has the table).
    Called once, before the serving threads start.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-8, count)  # M_ARENA_MAX
            libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (also stops its adjusting)
            libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def container_memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit in bytes (cgroup v2 or v1), or None when unlimited."""
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(text)
        return None
    return None


def default_budget(resident_bytes: int, limit_bytes: int | None) -> int:
    """Half of what the memory limit leaves beside the loaded process; 2 GiB without one."""
    if limit_bytes is None:
        return DEFAULT_BYTES
    return max(64 * MIB, (limit_bytes - resident_bytes) // 2)

"""Native names for the threads the predictor owns.

Python before 3.14 leaves every thread named after the process in the kernel, so ``top -H``,
``ps -L``, ``/proc/<pid>/task/*/comm`` and native profilers show a dozen ``python`` threads.
Naming them ``decode-0`` or ``engine-cuda:0`` tells an operator at a glance whether the
decode pool, a device worker or the event loop (the main thread) is the busy one;
``load-tests/cpu_split.py`` reads the names to split the server's CPU time by role.
"""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15  # prctl(2)
_COMM_MAX = 15  # bytes, without the terminating NUL


def name_current_thread(name: str | None = None) -> None:
    """Give the calling thread a kernel-visible name (Linux; a no-op elsewhere).

    Args:
        name: the name, cut to 15 bytes; by default the Python thread's own name.
    """
    if not sys.platform.startswith("linux"):
        return
    raw = (name or threading.current_thread().name).encode("utf-8", "replace")[:_COMM_MAX]
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
    except (OSError, AttributeError):  # no libc symbol: names are cosmetic
        return

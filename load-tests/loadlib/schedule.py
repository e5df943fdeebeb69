"""Open-loop arrival schedules: constant rate or Poisson, in phases.

A schedule is the list of moments (seconds from the start) at which requests are *due*,
fixed in advance from the offered rate alone: the server's speed never changes it. That is
what makes an open-loop test honest (no coordinated omission): a slow server faces the same
arrivals as a fast one, and the latency of a request is counted from its due time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """A stretch of the schedule at one offered rate.

    Attributes:
        duration_s: how long the phase lasts (``math.inf``: until the count bound).
        rate: offered requests per second (> 0).
    """

    duration_s: float
    rate: float


def arrivals(
    phases: Sequence[Phase],
    *,
    poisson: bool = False,
    seed: int | None = None,
    count: int | None = None,
) -> Iterator[float]:
    """Due times of requests, in seconds from the start, ascending.

    Constant arrivals are evenly spaced at ``1 / rate`` (the first at the phase start);
    Poisson arrivals have exponentially distributed gaps of mean ``1 / rate`` drawn from a
    generator seeded with ``seed`` (the same seed gives the same schedule).

    Args:
        phases: consecutive phases; each starts where the previous one ended.
        poisson: exponential gaps instead of even spacing.
        seed: seed of the gap generator (Poisson only).
        count: stop after this many arrivals (``None``: only the phases bound it).

    Yields:
        Due times in seconds.

    Raises:
        ValueError: a rate is not positive, or the schedule is unbounded.
    """
    if any(p.rate <= 0 or not math.isfinite(p.rate) for p in phases):
        raise ValueError("every phase needs a positive, finite rate")
    if count is None and any(math.isinf(p.duration_s) for p in phases):
        raise ValueError("an endless phase needs a count bound")
    rng = random.Random(seed)
    produced = 0
    phase_start = 0.0
    for phase in phases:
        phase_end = phase_start + phase.duration_s
        t = phase_start
        index = 0
        while count is None or produced < count:
            if poisson:
                if index > 0 or produced > 0:
                    t += rng.expovariate(phase.rate)
            else:
                t = phase_start + index / phase.rate
            if t >= phase_end:
                break
            yield t
            produced += 1
            index += 1
        if count is not None and produced >= count:
            return
        phase_start = phase_end


def constant_or_poisson(
    rate: float,
    *,
    poisson: bool = False,
    seed: int | None = None,
    count: int | None = None,
    duration_s: float | None = None,
) -> Iterator[float]:
    """One phase at ``rate``, bounded by ``count`` and/or ``duration_s``."""
    return arrivals(
        [Phase(math.inf if duration_s is None else duration_s, rate)],
        poisson=poisson,
        seed=seed,
        count=count,
    )

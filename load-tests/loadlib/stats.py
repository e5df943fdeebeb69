"""Latency statistics: exact percentiles and the summary every report shares."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Percentiles every summary reports.
QUANTILES = (50.0, 90.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile by linear interpolation between closest ranks.

    The same definition as ``numpy.percentile``'s default (Hyndman & Fan type 7): the value
    at fractional rank ``(n - 1) * q / 100`` of the sorted sample.

    Args:
        sorted_values: the sample, sorted ascending; must not be empty.
        q: the percentile, 0..100.

    Returns:
        The interpolated percentile.

    Raises:
        ValueError: empty sample or ``q`` outside 0..100.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


@dataclass(frozen=True)
class LatencySummary:
    """Summary of a latency sample, in milliseconds (``None`` fields: empty sample)."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    min: float | None
    mean: float | None

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> LatencySummary:
        """Summarise a sample of latencies in milliseconds."""
        ordered = sorted(values_ms)
        if not ordered:
            return cls(0, None, None, None, None, None, None)
        p50, p90, p99 = (percentile(ordered, q) for q in QUANTILES)
        return cls(
            count=len(ordered),
            p50=p50,
            p90=p90,
            p99=p99,
            max=ordered[-1],
            min=ordered[0],
            mean=math.fsum(ordered) / len(ordered),
        )

    def as_dict(self) -> dict[str, float | None]:
        """The JSON shape: ``{"p50", "p90", "p99", "max", "min", "mean"}`` rounded to µs."""
        return {
            key: None if value is None else round(value, 3)
            for key, value in (
                ("p50", self.p50),
                ("p90", self.p90),
                ("p99", self.p99),
                ("max", self.max),
                ("min", self.min),
                ("mean", self.mean),
            )
        }


def fmt_ms(value: float | None) -> str:
    """A latency for humans: ``12.3ms``, ``1.25s``; ``-`` for none."""
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f}s"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value >= 100:
        return f"{value:.0f}ms"
    return f"{value:.1f}ms"

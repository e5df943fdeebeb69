"""Reading a server's Prometheus ``/metrics`` page (the text exposition format)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_sum(text: str, name: str) -> float | None:
    """The sum of every sample called ``name`` (over all label sets); ``None`` if none.

    Args:
        text: a ``/metrics`` page.
        name: a sample name, e.g. ``process_resident_memory_bytes`` or
            ``predictor_batch_size_sum`` (a histogram's ``_sum``, ``_count``...).
    """
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return sum(values) if values else None

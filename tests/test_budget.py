"""The memory budget's accounting: what fits, what waits (503), what never fits (413).

The served behaviour (bursts of bodies and huge images, RSS going back) is in
tests/test_hostile.py; these are the rules it rests on, and the default the server derives
from a container's memory limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.errors import TooLarge
from predictor.runtime.budget import (
    DEFAULT_BYTES,
    MIB,
    Held,
    MemoryBudget,
    MemoryFull,
    container_memory_limit,
    default_budget,
)


def test_takes_until_full_then_refuses_until_given_back() -> None:
    budget = MemoryBudget(100 * MIB)
    budget.take(60 * MIB, "a body")
    with pytest.raises(MemoryFull, match="60 of 100 MiB") as refused:
        budget.take(50 * MIB, "another body")
    assert refused.value.status == 503
    assert refused.value.reason == "memory"
    budget.give(60 * MIB)
    budget.take(50 * MIB, "another body")  # fits once the first is given back
    assert (budget.used_bytes, budget.peak_bytes) == (50 * MIB, 60 * MIB)


def test_what_can_never_fit_is_413_naming_the_holder() -> None:
    budget = MemoryBudget(10 * MIB)
    with pytest.raises(TooLarge, match="decoding this image needs 20 MiB"):
        budget.take(20 * MIB, "decoding this image")
    assert budget.used_bytes == 0


def test_held_gives_back_everything_it_took_once() -> None:
    budget = MemoryBudget(10 * MIB)
    held = Held(budget, "this request body")
    held.take(4 * MIB)
    held.take(4 * MIB)
    with pytest.raises(MemoryFull):
        held.take(4 * MIB)
    assert budget.used_bytes == 8 * MIB
    held.give_back()
    held.give_back()  # a second call gives nothing more
    assert budget.used_bytes == 0


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"memory.max": "4294967296\n"}, 4 * 1024 * MIB),  # cgroup v2
        ({"memory.max": "max\n"}, None),
        ({"memory/memory.limit_in_bytes": "2147483648\n"}, 2 * 1024 * MIB),  # cgroup v1
        ({"memory/memory.limit_in_bytes": str(2**63 - 4096)}, None),  # v1's "no limit"
        ({}, None),
    ],
)
def test_the_container_memory_limit_is_read_from_cgroups(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert container_memory_limit(tmp_path) == expected


def test_the_default_is_half_of_what_the_limit_leaves() -> None:
    assert default_budget(1024 * MIB, 4096 * MIB) == 1536 * MIB
    assert default_budget(1024 * MIB, 1100 * MIB) == 64 * MIB  # never below 64 MiB
    assert default_budget(1024 * MIB, None) == DEFAULT_BYTES

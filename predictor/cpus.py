"""How many CPUs this process may use: its affinity, capped by the container's CPU limit."""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota.

    In a pod, ``os.cpu_count()`` and the affinity mask show the node's cores; the CPU limit
    is a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
    """
    cpus = len(os.sched_getaffinity(0))
    quota: float | None = None
    try:
        text = (cgroup_root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
            if us > 0 and period > 0:
                quota = us / period
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)

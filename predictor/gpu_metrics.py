"""GPU utilisation and memory through NVML, as Prometheus gauges read at scrape time.

Registered by the server for every visible CUDA device; absent (not zero) without a GPU.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    """GPU utilisation and memory through NVML, read at scrape time.

    Yields nothing (the series are absent, not zero) when NVML or a GPU is missing, and
    leaves out a device whose handle or reading fails.

    Args:
        devices: ``(label, cuda_index)`` of the CUDA devices the engines use.
        nvml: the NVML binding (``pynvml`` from ``nvidia-ml-py`` when not given; tests pass a
            stand-in).
    """

    def __init__(self, devices: Sequence[tuple[str, int]], nvml: Any = None) -> None:
        self._handles: list[tuple[str, object]] = []
        self._nvml: Any = None
        if not devices:
            return
        try:
            if nvml is None:
                nvml = importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception as exc:  # no driver, no library, odd container: no GPU series
            log.warning("NVML unavailable, GPU metrics disabled: %s", exc)
            return
        self._nvml = nvml
        for label, index in devices:
            try:
                self._handles.append((label, _nvml_handle(nvml, index)))
            except Exception as exc:
                log.warning("NVML has no handle for %s, its GPU metrics disabled: %s", label, exc)

    def describe(self) -> Iterable[Metric]:
        """The metric names, without touching NVML (used at registration)."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        """Yield the three GPU gauges, one sample per readable device."""
        if not self._handles:
            return []
        util, used, total = self._families()
        for label, handle in self._handles:
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU fell off the bus: skip it, keep serving
                log.warning("NVML read failed for %s: %s", label, exc)
                continue
            util.add_metric([label], rates.gpu / 100.0)
            used.add_metric([label], float(memory.used))
            total.add_metric([label], float(memory.total))
        return [family for family in (util, used, total) if family.samples]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "predictor_gpu_utilization_ratio",
                "Fraction of the last NVML sample period (1/6 s to 1 s) in which a kernel ran "
                "on the GPU, 0..1; counts every process on the device.",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "predictor_gpu_memory_used_bytes",
                "GPU memory in use by all processes on the device (NVML).",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "predictor_gpu_memory_total_bytes",
                "GPU memory installed on the device (NVML).",
                labels=["device"],
            ),
        ]


def _nvml_handle(nvml: Any, cuda_index: int) -> object:
    """NVML handle of a CUDA device, matched by UUID (CUDA and NVML order may differ)."""
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except Exception:
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)

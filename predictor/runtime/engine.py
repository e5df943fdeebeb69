"""The engine: one task's runner on one device, running whole batches.

It knows nothing of HTTP, asyncio, KServe or what the model computes (the task's
:class:`~predictor.tasks.base.Runner` does). One engine belongs to one batcher worker and is
only ever called from that worker's thread. It owns the device's CUDA stream and inference
mode, splits a batch that runs out of device memory, and is warmed up for every batch size
it will see (timed, so the batcher can batch up to the best size) before the model reports
ready.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)


class BatchRunner(Protocol):
    """What an engine runs (implemented by each task's runner)."""

    jit: bool

    def submit(self, items: list[Any]) -> Any:
        """Queue a batch on the current stream."""

    def collect(self, pending: Any) -> list[Any]:
        """The rows of a finished batch."""

    def blank(self) -> Any:
        """A warm-up input item."""


def warmup_sizes(max_batch_size: int, device: str) -> list[int]:
    """Batch sizes to run before serving.

    All of them on CUDA (cuDNN picks kernels per shape), powers of two and the maximum on CPU.
    """
    if device.startswith("cuda") and max_batch_size <= 64:
        return list(range(1, max_batch_size + 1))
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class Engine:
    """Runs batches of one model on one device.

    Args:
        runner: the task's runner for this device.
        device: ``cpu`` or ``cuda:N``.
        dtype: the compute dtype the runner was built with.
        max_batch_size: the largest batch :meth:`infer` will receive.
    """

    def __init__(
        self, runner: BatchRunner, device: str, dtype: torch.dtype, max_batch_size: int
    ) -> None:
        self.runner = runner
        self.device = torch.device(device)
        self.name = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.batches_run = 0
        self.items_run = 0
        #: Images/s by batch size, measured during :meth:`warmup`.
        self.throughput: dict[int, float] = {}
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda else None  # type: ignore[no-untyped-call]

    @property
    def jit(self) -> bool:
        """Whether the runner runs a TorchScript trace (else eager PyTorch)."""
        return bool(self.runner.jit)

    @property
    def dtype_name(self) -> str:
        """The compute dtype as text (``float16``...)."""
        return str(self.dtype).removeprefix("torch.")

    def infer(self, items: list[Any]) -> list[Any]:
        """Run one batch; see :meth:`run` for the out-of-memory-splitting wrapper.

        Args:
            items: the runner's input items (what the task's ``batch_input`` made); at
                most ``max_batch_size`` of them.

        Returns:
            One result row per item.
        """
        batch = len(items)
        if not 0 < batch <= self.max_batch_size:
            raise ValueError(f"batch of {batch} items; this engine takes 1..{self.max_batch_size}")
        with torch.inference_mode():
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    pending = self.runner.submit(items)
                self._stream.synchronize()
            else:
                pending = self.runner.submit(items)
            rows = self.runner.collect(pending)
        self.batches_run += 1
        self.items_run += batch
        return rows

    def run(self, items: list[Any]) -> list[Any]:
        """Run one batch; on CUDA out-of-memory, run it again in halves (down to one item)."""
        try:
            return self.infer(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(items) // 2
            log.warning(
                "out of memory at batch %d: retrying as %d + %d",
                len(items),
                half,
                len(items) - half,
            )
            return [*self.run(items[:half]), *self.run(items[half:])]

    def warmup(self, sizes: Sequence[int] | None = None) -> float:
        """Run every batch size: once to warm up, then timed.

        The first run pays for cuDNN autotuning, allocator growth and lazy initialisation;
        the timed ones fill :attr:`throughput`.

        Args:
            sizes: batch sizes; by default :func:`warmup_sizes`.

        Returns:
            Seconds spent.
        """
        start = time.perf_counter()
        blank_item = self.runner.blank()
        for size in sizes or warmup_sizes(self.max_batch_size, self.name):
            blank = [blank_item] * size
            self.infer(blank)
            # The best of a few timed runs (as many as fit in ~0.2 s, 1 to 5): single
            # runs of fast batches are too noisy to rank batch sizes by.
            best, spent, runs = math.inf, 0.0, 0
            while runs < 5 and (runs == 0 or spent + best < 0.2):
                timed = time.perf_counter()
                self.infer(blank)
                elapsed = time.perf_counter() - timed
                best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
            self.throughput[size] = size / max(best, 1e-9)
        self.batches_run = 0
        self.items_run = 0
        return time.perf_counter() - start

    def best_batch_size(self, tolerance: float = 0.03) -> int:
        """The smallest warmed-up batch size within ``tolerance`` of the best images/s.

        On a GPU that is the knee of the curve (bigger batches add latency, not throughput);
        on a CPU, large batches are often slower per image than moderate ones (caches), so
        batching up to the maximum would lose throughput. ``max_batch_size`` before warm-up.
        """
        if not self.throughput:
            return self.max_batch_size
        best = max(self.throughput.values())
        return min(size for size, rate in self.throughput.items() if rate >= (1 - tolerance) * best)

"""The engine: one module on one device, running whole batches.

It knows nothing of HTTP, asyncio or KServe. One engine belongs to one batcher worker and
is only ever called from that worker's thread. On CUDA it owns a stream, pinned host
buffers for input and output, converts and normalises ``uint8`` pixels on the device, runs
in ``float16``/``bfloat16`` with channels-last layout, and is warmed up for every batch
size it will see before the model reports ready.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from predictor.devices import resolve_dtype
from predictor.model_store import InputSpec
from predictor.pipeline import Pipeline, trace

log = logging.getLogger(__name__)


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


def _split_on_oom(run: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[..., np.ndarray]:
    def guarded(items: list[np.ndarray]) -> np.ndarray:
        try:
            return run(items)
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
            return np.concatenate([guarded(items[:half]), guarded(items[half:])])

    return guarded


class Engine:
    """Runs batches of one model on one device.

    Args:
        module: the network (CPU, eval mode); the engine takes its own copy.
        spec: the model's input spec (normalisation, shape).
        device: ``cpu`` or ``cuda:N``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        max_batch_size: the largest batch :meth:`infer` will receive.
        jit: trace the whole pixels-to-probabilities pipeline with TorchScript (checked
            against eager execution; eager is kept when tracing fails or disagrees).
        freeze: freeze the trace (faster; its weights are never freed, so only for models
            that stay loaded, see :func:`predictor.pipeline.trace`).
    """

    def __init__(
        self,
        module: nn.Module,
        spec: InputSpec,
        device: str,
        dtype: str,
        max_batch_size: int,
        jit: bool = False,
        freeze: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.name = device
        self.dtype = resolve_dtype(dtype, device)
        self.spec = spec
        self.max_batch_size = max_batch_size
        self.batches_run = 0
        self.items_run = 0
        #: Images/s by batch size, measured during :meth:`warmup`.
        self.throughput: dict[int, float] = {}
        self._cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None  # type: ignore[no-untyped-call]
        module = copy.deepcopy(module)
        if self._cuda:
            torch.backends.cudnn.benchmark = True
            module = module.to(self.device, dtype=self.dtype)
            module = module.to(memory_format=torch.channels_last)
        elif self.dtype != torch.float32:
            module = module.to(dtype=self.dtype)
        self.module = module
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        # x_norm = (x/255 - mean) / std = x * scale + shift
        scale = 1.0 / (255.0 * std)
        shift = -mean / std
        self._np_scale = scale.numpy().reshape(-1, 1, 1)
        self._np_shift = shift.numpy().reshape(-1, 1, 1)
        self.pipeline = Pipeline(
            module, scale.to(self.device), shift.to(self.device), self.dtype, self._cuda
        )
        height, width = spec.crop
        shape = (max_batch_size, height, width, spec.channels)
        self._host_in = torch.empty(shape, dtype=torch.uint8, pin_memory=self._cuda)
        self._host_out: torch.Tensor | None = None
        self._pixels_to_probs: Callable[[torch.Tensor], torch.Tensor] = self.pipeline
        self.jit = False
        if jit:
            self.jit = self._use_traced(freeze)
        self.run = _split_on_oom(self.infer)

    def _use_traced(self, freeze: bool) -> bool:
        """Trace the pipeline; keep it only if it matches eager results on two batch sizes."""
        height, width = self.spec.crop
        generator = torch.Generator().manual_seed(0)
        samples = [
            torch.randint(0, 256, (n, height, width, self.spec.channels), generator=generator)
            .to(torch.uint8)
            .to(self.device)
            for n in sorted({1, self.max_batch_size})
        ]
        tolerance = 1e-4 if self.dtype == torch.float32 else 2e-2
        try:
            traced = trace(self.pipeline, samples[-1], freeze)
            with torch.inference_mode():
                for sample in samples:
                    expected, got = self.pipeline(sample), traced(sample)
                    if not torch.allclose(expected, got, atol=tolerance):
                        raise ValueError("traced results differ from eager ones")
        except Exception as exc:  # any tracing problem: eager is always correct
            log.warning("%s: TorchScript tracing unusable (%s); running eagerly", self.name, exc)
            return False
        self._pixels_to_probs = traced
        return True

    @property
    def dtype_name(self) -> str:
        """The compute dtype as text (``float16``...)."""
        return str(self.dtype).removeprefix("torch.")

    def infer(self, items: list[np.ndarray]) -> np.ndarray:
        """Run one batch; see :meth:`run` for the out-of-memory-splitting wrapper.

        Args:
            items: ``uint8`` ``(H, W, C)`` pixel arrays, or normalised ``float32``
                ``(C, H, W)`` tensors; at most ``max_batch_size`` of them.

        Returns:
            ``float32`` class probabilities, one row per item.
        """
        batch = len(items)
        if not 0 < batch <= self.max_batch_size:
            raise ValueError(f"batch of {batch} items; this engine takes 1..{self.max_batch_size}")
        with torch.inference_mode():
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    probs = self._forward(items)
                    out = self._pinned_out(batch, probs.shape[1])
                    out.copy_(probs, non_blocking=True)
                self._stream.synchronize()
                result = out.numpy().copy()
            else:
                result = self._forward(items).numpy()
        self.batches_run += 1
        self.items_run += batch
        return result

    def _forward(self, items: list[np.ndarray]) -> torch.Tensor:
        batch = len(items)
        if all(item.dtype == np.uint8 for item in items):
            host = self._host_in[:batch]
            np.stack(items, out=host.numpy())
            return self._pixels_to_probs(host.to(self.device, non_blocking=True))
        # Preprocessed FP32 tensors (v2), possibly mixed with pixels: the eager path.
        arrays = [self._normalise_np(item) for item in items]
        x = torch.from_numpy(np.stack(arrays)).to(self.device, non_blocking=True)
        return self.pipeline.classify(x)

    def _normalise_np(self, item: np.ndarray) -> np.ndarray:
        if item.dtype == np.uint8:
            chw = item.transpose(2, 0, 1).astype(np.float32)
            return np.asarray(chw * self._np_scale + self._np_shift, dtype=np.float32)
        return item

    def _pinned_out(self, batch: int, classes: int) -> torch.Tensor:
        if self._host_out is None or self._host_out.shape[1] != classes:
            self._host_out = torch.empty(
                (self.max_batch_size, classes), dtype=torch.float32, pin_memory=True
            )
        return self._host_out[:batch]

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
        height, width = self.spec.crop
        for size in sizes or warmup_sizes(self.max_batch_size, self.name):
            blank = [np.zeros((height, width, self.spec.channels), np.uint8)] * size
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

"""A classifier on one device: uint8 pixels in, class probabilities out, in one traced graph.

The runner keeps a pinned host buffer per device for the batch's pixels (``uint8``, four
times fewer bytes to copy than float32) and for the probabilities coming back, normalises
on the device, runs in the engine's dtype with channels-last layout on CUDA, and traces the
whole pixels-to-probabilities pipeline with TorchScript (checked against eager results on
two batch sizes; eager is kept when tracing fails or disagrees).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from predictor.store.spec import InputSpec

log = logging.getLogger(__name__)


class Pipeline(nn.Module):
    """Pixels to probabilities on the device: normalise, cast, layout, network, softmax.

    One module, so that it can be traced as a whole: the traced pipeline runs in C++ and
    releases the GIL for the entire batch instead of taking it for every operator.
    """

    def __init__(
        self,
        network: nn.Module,
        scale: torch.Tensor,
        shift: torch.Tensor,
        dtype: torch.dtype,
        channels_last: bool,
    ) -> None:
        super().__init__()
        self.network = network
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.compute_dtype = dtype
        self.channels_last = channels_last
        self.training = False  # not .eval(): exported programs refuse train()/eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8`` ``[N, H, W, C]`` pixels to ``float32`` ``[N, classes]`` probabilities."""
        x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return self.classify(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``float32`` ``[N, C, H, W]`` to probabilities."""
        x = x.to(self.compute_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()
        logits = self.network(x)
        if isinstance(logits, tuple | list):
            logits = logits[0]
        probs: torch.Tensor = logits.float().softmax(dim=1)
        return probs


def trace(
    pipeline: nn.Module, example: torch.Tensor, freeze: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """TorchScript-trace ``pipeline``, and freeze the trace when ``freeze``.

    Deprecated upstream, yet still the way to run a whole forward without the GIL from
    eager PyTorch; callers fall back to eager execution when it fails. Freezing folds the
    weights into the graph as constants (a few % faster on CPU), and PyTorch never frees
    those constants, even after the module is gone (pytorch/pytorch#96726): a model that
    may be unloaded is traced without freezing.
    """
    from torch.jit._trace import TracerWarning

    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        traced = torch.jit.trace(pipeline, example, check_trace=False)  # type: ignore[no-untyped-call]
        frozen = torch.jit.freeze(traced) if freeze else traced
    for warning in caught:
        # Python control flow on tensor values (or similar) was baked into the trace.
        if issubclass(warning.category, TracerWarning):
            raise ValueError(f"the trace may be wrong: {str(warning.message).splitlines()[0]}")
    result: Callable[[torch.Tensor], torch.Tensor] = frozen
    return result


class ClassificationRunner:
    """One classifier on one device (see :class:`predictor.tasks.base.Runner`).

    Args:
        module: the network (CPU, eval mode); the runner takes its own copy.
        spec: the model's input spec (normalisation, shape).
        device: ``cpu`` or ``cuda:N``.
        dtype: the compute dtype.
        max_batch_size: the largest batch it will receive.
        jit: trace the pipeline (checked against eager execution).
        freeze: freeze the trace (only for models that stay loaded).
    """

    def __init__(
        self,
        module: nn.Module,
        spec: InputSpec,
        device: str,
        dtype: torch.dtype,
        max_batch_size: int,
        jit: bool,
        freeze: bool,
    ) -> None:
        self.device = torch.device(device)
        self.spec = spec
        self.max_batch_size = max_batch_size
        cuda = self.device.type == "cuda"
        module = copy.deepcopy(module)
        if cuda:
            module = module.to(self.device, dtype=dtype).to(memory_format=torch.channels_last)
        elif dtype != torch.float32:
            module = module.to(dtype=dtype)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        # x_norm = (x/255 - mean) / std = x * scale + shift
        scale = 1.0 / (255.0 * std)
        shift = -mean / std
        self._np_scale = scale.numpy().reshape(-1, 1, 1)
        self._np_shift = shift.numpy().reshape(-1, 1, 1)
        self.pipeline = Pipeline(module, scale.to(self.device), shift.to(self.device), dtype, cuda)
        height, width = spec.crop
        shape = (max_batch_size, height, width, spec.channels)
        self._host_in = torch.empty(shape, dtype=torch.uint8, pin_memory=cuda)
        self._host_out: torch.Tensor | None = None
        self._cuda = cuda
        self._pixels_to_probs: Callable[[torch.Tensor], torch.Tensor] = self.pipeline
        self._tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        self.jit = jit and self._use_traced(freeze)

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
        try:
            traced = trace(self.pipeline, samples[-1], freeze)
            with torch.inference_mode():
                for sample in samples:
                    expected, got = self.pipeline(sample), traced(sample)
                    if not torch.allclose(expected, got, atol=self._tolerance):
                        raise ValueError("traced results differ from eager ones")
        except Exception as exc:  # any tracing problem: eager is always correct
            log.warning("%s: TorchScript tracing unusable (%s); running eagerly", self.device, exc)
            return False
        self._pixels_to_probs = traced
        return True

    def blank(self) -> np.ndarray:
        """A black image of the model's input size."""
        height, width = self.spec.crop
        return np.zeros((height, width, self.spec.channels), np.uint8)

    def submit(self, items: list[np.ndarray]) -> Any:
        """Copy the batch to the device, run it, and queue the copy back."""
        probs = self._forward(items)
        if not self._cuda:
            return probs
        out = self._pinned_out(len(items), probs.shape[1])
        out.copy_(probs, non_blocking=True)
        return out

    def collect(self, pending: Any) -> list[Any]:
        """The probabilities, one ``float32`` row per item."""
        result = pending.numpy()
        rows: list[Any] = list(result.copy() if self._cuda else result)
        return rows

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

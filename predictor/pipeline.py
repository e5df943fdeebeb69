"""The module an engine runs, pixels to probabilities, and its checked TorchScript trace."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn


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
    pipeline: Pipeline, example: torch.Tensor, freeze: bool = True
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

"""A detector on one device: a list of differently sized uint8 images in, boxes out.

torchvision's detectors take a list of ``[C, H, W]`` float images of any sizes and batch
them themselves (resize within their bounds, pad to a common size, map boxes back to each
input's size); fixed-size ones (SSD) stretch every image to their size. The runner copies
each image to the device as ``uint8`` and converts it there, runs the batch with the
loosest thresholds any image in it asked for (the network's thresholds are attributes,
set only here, on the engine's one thread), and answers each image's boxes, scores and
class ids in the pixels it was given.

A batch of mixed sizes runs as one forward pass per padded size (:meth:`canvas`): torchvision
pads a batch to its largest image, and convolutions near an image's edge see that padding,
so an image batched with a larger one would be answered slightly differently than alone.
Grouped by the padded size each image gets on its own, an answer never depends on what it
was batched with. Images arrive already resized to the network's size (the task prepares
them so), and most photos share a handful of aspect ratios, so groups are few.

Detectors run eagerly: their forward is data-dependent (proposals, NMS), which a
TorchScript trace cannot capture.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from predictor.store.spec import InputSpec


@dataclass(frozen=True)
class Frame:
    """What the runner receives for one image: pixels and the loosest settings wanted.

    Attributes:
        pixels: ``uint8`` HxWxC, already within the network's size bounds.
        score_threshold: the runner may drop detections scoring below it.
        max_detections: the runner may keep only this many per image.
    """

    pixels: np.ndarray
    score_threshold: float
    max_detections: int


def threshold_holder(module: nn.Module) -> Any:
    """The submodule holding the network's ``score_thresh`` and ``detections_per_img``.

    The ROI heads for the two-stage detectors (Faster/Mask R-CNN), the network itself for
    the one-stage ones (RetinaNet, FCOS, SSD); None for a network with neither.
    """
    for holder in (getattr(module, "roi_heads", None), module):
        if hasattr(holder, "score_thresh") and hasattr(holder, "detections_per_img"):
            return holder
    return None


class DetectionRunner:
    """One detector on one device (see :class:`predictor.runtime.engine.BatchRunner`).

    Args:
        module: the detector (CPU, eval mode); the runner takes its own copy.
        spec: the model's input spec (colour, size bounds).
        device: ``cpu`` or ``cuda:N``.
        dtype: the compute dtype (half precision runs under autocast on CUDA).
    """

    jit = False

    def __init__(
        self,
        module: nn.Module,
        spec: InputSpec,
        device: str,
        dtype: torch.dtype,
    ) -> None:
        self.device = torch.device(device)
        self.spec = spec
        self.module = copy.deepcopy(module).to(self.device).eval()
        self._holder = threshold_holder(self.module)
        self._transform = getattr(self.module, "transform", None)
        self._autocast = self.device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
        self._dtype = dtype

    def blank(self) -> Frame:
        """A mid-grey image of a typical 4:3 size within the bounds (warm-up)."""
        height = self.spec.resize
        width = round(height * 4 / 3)
        if self.spec.max_size is not None:
            width = min(width, self.spec.max_size)
        pixels = np.full((height, width, self.spec.channels), 127, np.uint8)
        return Frame(pixels, 1.0, 1)

    def submit(self, frames: list[Frame]) -> Any:
        """Run the batch with its loosest thresholds; the outputs stay on the device."""
        if self._holder is not None:
            self._holder.score_thresh = min(frame.score_threshold for frame in frames)
            self._holder.detections_per_img = max(frame.max_detections for frame in frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, frame in enumerate(frames):
            groups.setdefault(self.canvas(frame.pixels.shape[:2]), []).append(index)
        outputs: list[Any] = [None] * len(frames)
        for indices in groups.values():
            images = [self._to_device(frames[index].pixels) for index in indices]
            for index, output in zip(indices, self._forward(images), strict=True):
                outputs[index] = output
        return outputs

    def canvas(self, size: tuple[int, int]) -> tuple[int, int]:
        """The padded ``(height, width)`` the network gives an image of ``size`` on its own.

        Fixed-size networks (SSD) stretch every image to one size; the others pad to a
        multiple of their ``size_divisible`` (images arrive at the size they resize to).
        """
        fixed = getattr(self._transform, "fixed_size", None)
        if fixed:
            return int(fixed[0]), int(fixed[1])
        step = int(getattr(self._transform, "size_divisible", 1) or 1)
        height, width = size
        return -(-height // step) * step, -(-width // step) * step

    def _forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        if self._autocast:
            with torch.autocast("cuda", dtype=self._dtype):
                outputs: list[dict[str, torch.Tensor]] = self.module(images)
        else:
            outputs = self.module(images)
        return outputs

    def collect(self, pending: Any) -> list[Any]:
        """``(boxes [K, 4], scores [K], class_ids [K])`` per image, best first."""
        rows = []
        for output in pending:
            rows.append(
                (
                    output["boxes"].float().cpu().numpy(),
                    output["scores"].float().cpu().numpy(),
                    output["labels"].cpu().numpy().astype(np.int64),
                )
            )
        return rows

    def _to_device(self, pixels: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        return image.permute(2, 0, 1).float().div_(255.0)

"""A parsed model directory: its input, labels and task settings.

:mod:`.manifest` reads ``model.json`` into these; everything else reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("classification", "detection")
#: The most detections one image may answer (``max_detections`` is at most this).
MAX_DETECTIONS = 1000
COLORS = ("RGB", "L")
DEFAULT_VERSION = "1"


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor.

    Attributes:
        color: ``RGB`` or ``L`` (grayscale).
        resize: the shorter side is resized to this many pixels.
        crop: ``(height, width)`` of the centre crop taken after resizing.
        mean: per-channel mean in 0..1 units.
        std: per-channel standard deviation in 0..1 units.
        background: grey level (0..255) transparent pixels are composited over.
        max_size: detection: the longer side is at most this many pixels (aspect kept;
            ``resize`` bounds the shorter side; ``crop`` does not apply).
    """

    color: str
    resize: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    background: int = 255
    max_size: int | None = None

    @property
    def channels(self) -> int:
        """Number of channels of the model input."""
        return 3 if self.color == "RGB" else 1

    def fit(self, width: int, height: int) -> float:
        """Detection: the scale that brings an image to the size the network resizes it to.

        The shorter side to ``resize`` unless the longer would pass ``max_size``, then the
        longer to ``max_size``, as torchvision's detectors resize (so they then resize by
        exactly 1, and the padded size a batch gives each image depends on it alone).
        """
        scale = self.resize / max(1, min(width, height))
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(1, width, height))
        return scale


@dataclass(frozen=True)
class Thresholds:
    """A detector's defaults: what an answer keeps.

    Attributes:
        score_threshold: detections scoring below it are left out (0..1).
        max_detections: at most this many detections per image, best first.
    """

    score_threshold: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        """Refuse values out of range (the manifest and ``export`` word it for their user).

        Raises:
            ValueError: ``score_threshold`` outside 0..1 or ``max_detections`` outside
                1..:data:`MAX_DETECTIONS`.
        """
        if not 0 <= self.score_threshold <= 1:  # NaN fails too
            raise ValueError("score_threshold must be a number from 0 to 1")
        if not 1 <= self.max_detections <= MAX_DETECTIONS:
            raise ValueError(f"max_detections must be an integer from 1 to {MAX_DETECTIONS}")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed, validated model directory.

    Attributes:
        name: the served name.
        directory: the model directory.
        task: what the model does (``classification``).
        input: preprocessing spec.
        labels: class labels, index = class id.
        top_k: default number of classes returned.
        version: the model version the v2 routes report and accept.
        arch: architecture name when weights are a state dict.
        arch_kwargs: builder arguments.
        weights: state-dict file, when ``arch`` is set.
        program: ``torch.export`` program file, instead of arch + weights.
        jit: whether the server may run the model as a TorchScript trace (``"jit": false``
            in the manifest for models whose forward has side effects or data-dependent
            control flow the tracer cannot see).
        thresholds: a detector's default score threshold and detection count.
    """

    name: str
    directory: Path
    task: str
    input: InputSpec
    labels: tuple[str, ...]
    top_k: int
    version: str = DEFAULT_VERSION
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    program: Path | None = None
    jit: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def arch_label(self) -> str:
        """A short description of the network for metrics and logs."""
        return self.arch or f"exported:{self.program.name if self.program else '?'}"

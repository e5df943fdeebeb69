"""The task seam: what one kind of model does with an image, a batch and an answer.

A :class:`Task` is chosen from the manifest's ``task`` and owns everything that depends on
what the model computes: how an image is prepared (pixels, plus what maps results back onto
the original image), how a batch runs on a device (a runner: rows out, any shape),
postprocessing, the per-request parameters it accepts, its v1 answer and v2 outputs, and
its v2 metadata. The edges, batcher, engine, decode pool, metrics and drain know none of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from predictor.errors import BadInput
from predictor.runtime.engine import BatchRunner
from predictor.store.spec import ModelSpec

if TYPE_CHECKING:
    from predictor.tasks.images import DecodeLimits


@dataclass(frozen=True)
class ImageInfo:
    """The image a result belongs to, as a viewer shows it (after EXIF orientation).

    Attributes:
        width: width in pixels.
        height: height in pixels.
        model_width: width of the pixels the model was given (results map back by
            ``width / model_width``).
        model_height: height of those pixels.
    """

    width: int
    height: int
    model_width: int
    model_height: int


@dataclass
class Item:
    """One image ready for a batch.

    Attributes:
        pixels: what the runner takes (``uint8`` HxWxC pixels, or an ``FP32`` CxHxW tensor).
        info: the original image, for mapping results back (None for a tensor input).
    """

    pixels: np.ndarray
    info: ImageInfo | None = None


@dataclass
class Tensor:
    """One output tensor of a v2 answer, protocol-neutral.

    Attributes:
        name: output name.
        datatype: v2 datatype (``BYTES``, ``FP32``, ``INT64``...).
        array: the values; ``BYTES`` as an object array of ``bytes``.
        binary: send as raw binary data (REST binary extension / gRPC raw contents).
    """

    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


@dataclass
class V2Answer:
    """A v2 inference answer before it is put on a wire (REST JSON, REST binary or gRPC)."""

    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor] = field(default_factory=list)


class Task(ABC):
    """What a kind of model does (one subclass per task).

    Args:
        spec: the model directory's manifest.
    """

    #: The manifest's ``task`` value.
    name: ClassVar[str]
    #: The v2 outputs, in answer order.
    outputs: ClassVar[tuple[str, ...]]
    #: The per-request parameters it takes (their defaults can change at runtime).
    parameters: ClassVar[tuple[str, ...]]

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def defaults(self) -> dict[str, Any]:
        """The per-request parameters' defaults, from the manifest."""

    @abstractmethod
    def check_parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters this task takes, validated; others are left out.

        Raises:
            BadInput: a value is out of range; the message names the parameter.
        """

    @abstractmethod
    def prepare(self, payload: bytes | np.ndarray, limits: DecodeLimits) -> Item:
        """One encoded image (or a preprocessed tensor) as a batch item (in the decode pool).

        Raises:
            BadInput: not a usable image.
            TooLarge: more pixels than ``limits.max_pixels``.
            MemoryFull: the memory budget cannot hold the decode now.
        """

    def batch_input(self, item: Item, parameters: Mapping[str, Any]) -> Any:
        """What the runner receives for one prepared image (by default, its pixels)."""
        return item.pixels

    @abstractmethod
    def runner(
        self, module: Any, device: str, dtype: Any, max_batch_size: int, jit: bool, freeze: bool
    ) -> BatchRunner:
        """The batch runner of ``module`` on ``device``."""

    @abstractmethod
    def postprocess(
        self, rows: Sequence[Any], items: Sequence[Item], parameters: Mapping[str, Any]
    ) -> list[Any]:
        """One result per image from the runner's rows."""

    def counts(self, results: Sequence[Any]) -> list[int] | None:
        """How many findings each result holds (detections per image); None: not counted."""
        return None

    @abstractmethod
    def encode_v1(self, results: Sequence[Any]) -> dict[str, Any]:
        """The v1 answer (``{"predictions": [...]}``)."""

    @abstractmethod
    def v2_outputs(self, results: Sequence[Any]) -> dict[str, tuple[str, np.ndarray]]:
        """Every v2 output: name -> (datatype, array), in :attr:`outputs` order."""

    @abstractmethod
    def input_metadata(self) -> list[dict[str, Any]]:
        """The v2 metadata of the inputs."""

    @abstractmethod
    def output_metadata(self) -> list[dict[str, Any]]:
        """The v2 metadata of the outputs."""

    @abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """How images become the model's input (the config route's ``preprocessing``)."""

    @abstractmethod
    def draw(self, image: Image.Image, result: Any) -> None:
        """Draw one image's result onto it (RGB, as a viewer shows it), in place."""


#: The largest integer a request parameter may hold (``top_k``, ``timeout_ms``...).
MAX_INT = 2**31 - 1


def positive_int(value: object, where: str) -> int:
    """An integer in ``1..MAX_INT`` from an int or decimal text; the value is never quoted.

    Raises:
        BadInput: anything else; the message names ``where``.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and len(value) <= 32:
        text = value.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
    if number is None or not 1 <= number <= MAX_INT:
        raise BadInput(f"{where} must be an integer from 1 to {MAX_INT}")
    return number

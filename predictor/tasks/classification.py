"""Image classification: fixed-size crops in, class probabilities out, top-k answers.

Images are resized on their shorter side and centre-cropped to the model's input
(:func:`decode_image`), batched as ``uint8`` and normalised on the device
(:mod:`predictor.tasks.classification_runner`); each row of softmax probabilities becomes
the top-k labels (:func:`top_k`), answered as v1 ``predictions`` or v2 ``labels``,
``scores`` and ``class_ids``. The per-request parameter is ``top_k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from predictor.errors import BadInput
from predictor.runtime.engine import BatchRunner
from predictor.store.spec import InputSpec
from predictor.tasks import drawing
from predictor.tasks.base import Item, Task, positive_int
from predictor.tasks.images import DecodeLimits, open_image

#: Above this many pixels, the resize works on the crop's source region only, so a very
#: thin image (1 x 40M pixels) never becomes a multi-gigabyte intermediate.
RESIZE_FULL_MAX_PIXELS = 1 << 22


@dataclass(frozen=True)
class TopK:
    """The k most probable classes of one image, most probable first.

    Attributes:
        labels: class labels.
        scores: softmax probabilities.
        class_ids: class indices.
    """

    labels: tuple[str, ...]
    scores: np.ndarray
    class_ids: np.ndarray


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> TopK:
    """Pick the ``k`` most probable classes from one row of softmax probabilities.

    Ties are broken by the lower class id, so results are deterministic.

    Args:
        probabilities: ``float32`` vector of class probabilities.
        labels: class labels; ids beyond the list are labelled by their number.
        k: how many classes; clipped to the number of classes.

    Returns:
        The top-k classes.
    """
    classes = probabilities.shape[0]
    k = max(1, min(k, classes))
    if k < classes:  # O(classes): keep everything tied with the k-th largest, sort only that
        kth = np.partition(probabilities, classes - k)[classes - k]
        candidates = np.flatnonzero(probabilities >= kth)
    else:
        candidates = np.arange(classes)
    order = np.lexsort((candidates, -probabilities[candidates]))[:k]
    ids = candidates[order].astype(np.int64)
    names = tuple(labels[i] if i < len(labels) else str(i) for i in ids.tolist())
    return TopK(names, probabilities[ids].astype(np.float32), ids)


def decode_image(data: bytes, spec: InputSpec, limits: int | DecodeLimits) -> np.ndarray:
    """Decode one encoded image into the model's input pixels.

    Args:
        data: the encoded image (JPEG, PNG, WebP or BMP).
        spec: the model's input spec (colour mode, resize, crop).
        limits: the pixel limit (and memory budget); a bare number is the pixel limit.

    Returns:
        ``uint8`` array of shape ``(crop_h, crop_w, channels)``.

    Raises:
        BadInput: not a usable image (see :func:`predictor.tasks.images.open_image`).
        TooLarge: the header announces more than ``max_pixels`` pixels.
    """
    if isinstance(limits, int):
        limits = DecodeLimits(limits)
    with open_image(data, limits, spec.color, spec.background, spec.resize) as decoded:
        try:
            return resize_crop(decoded.image, spec)
        except MemoryError:
            raise
        except Exception as exc:  # a degenerate size Pillow cannot resample
            raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None


class Classification(Task):
    """Image classification (``"task": "classification"``)."""

    name = "classification"
    outputs = ("labels", "scores", "class_ids")
    parameters = ("top_k",)

    def defaults(self) -> dict[str, Any]:
        """``top_k`` from the manifest."""
        return {"top_k": self.spec.top_k}

    def check_parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``top_k``: an integer from 1."""
        checked: dict[str, Any] = {}
        if "top_k" in values:
            checked["top_k"] = positive_int(values["top_k"], "parameters.top_k")
        return checked

    def prepare(self, payload: bytes | np.ndarray, limits: DecodeLimits) -> Item:
        """Crop pixels from an encoded image; an FP32 tensor is checked as it is."""
        if isinstance(payload, bytes):
            return Item(decode_image(payload, self.spec.input, limits))
        return Item(check_tensor(payload, self.spec.input))

    def runner(
        self, module: Any, device: str, dtype: Any, max_batch_size: int, jit: bool, freeze: bool
    ) -> BatchRunner:
        """The traced (or eager) normalise-network-softmax pipeline on ``device``."""
        from predictor.tasks.classification_runner import ClassificationRunner

        return ClassificationRunner(
            module, self.spec.input, device, dtype, max_batch_size, jit and self.spec.jit, freeze
        )

    def postprocess(
        self, rows: Sequence[Any], items: Sequence[Item], parameters: Mapping[str, Any]
    ) -> list[TopK]:
        """The top-k classes of each row of probabilities."""
        k = int(parameters["top_k"])
        return [top_k(row, self.spec.labels, k) for row in rows]

    def encode_v1(self, results: Sequence[Any]) -> dict[str, Any]:
        """``{"predictions": [[{"label", "score", "class_id"}, ...k], ...N]}``."""
        return {
            "predictions": [
                [
                    {"label": label, "score": float(score), "class_id": int(class_id)}
                    for label, score, class_id in zip(
                        r.labels, r.scores.tolist(), r.class_ids.tolist(), strict=True
                    )
                ]
                for r in results
            ]
        }

    def v2_outputs(self, results: Sequence[Any]) -> dict[str, tuple[str, np.ndarray]]:
        """``labels`` (BYTES), ``scores`` (FP32), ``class_ids`` (INT64), each ``[N, k]``."""
        k = min(len(r.labels) for r in results)
        labels = np.array([[s.encode() for s in r.labels[:k]] for r in results], dtype=np.object_)
        return {
            "labels": ("BYTES", labels),
            "scores": ("FP32", np.stack([r.scores[:k] for r in results]).astype(np.float32)),
            "class_ids": ("INT64", np.stack([r.class_ids[:k] for r in results]).astype(np.int64)),
        }

    def input_metadata(self) -> list[dict[str, Any]]:
        """Encoded images (BYTES), or a preprocessed FP32 tensor normalised as it says."""
        spec = self.spec.input
        height, width = spec.crop
        return [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {
                "name": "tensor",
                "datatype": "FP32",
                "shape": [-1, spec.channels, height, width],
                "parameters": {
                    "color": spec.color,
                    "layout": "NCHW",
                    "resize": spec.resize,
                    "crop": list(spec.crop),
                    "mean": list(spec.mean),
                    "std": list(spec.std),
                    "normalization": "x = (pixel / 255 - mean) / std, per channel, pixels 0..255",
                },
            },
        ]

    def preprocessing(self) -> dict[str, Any]:
        """Colour, resize, crop, normalisation."""
        spec = self.spec.input
        return {
            "color": spec.color,
            "resize": spec.resize,
            "crop": list(spec.crop),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "background": spec.background,
        }

    def draw(self, image: Image.Image, result: Any) -> None:
        """The top-k labels and scores, one per line, in the top-left corner."""
        found: TopK = result
        drawing.lines(
            image,
            [
                f"{label} {score:.2f}"
                for label, score in zip(found.labels, found.scores.tolist(), strict=True)
            ],
        )

    def output_metadata(self) -> list[dict[str, Any]]:
        """Top-k labels, scores and class ids."""
        return [
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "class_ids", "datatype": "INT64", "shape": [-1, -1]},
        ]


def resize_crop(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Resize the shorter side to ``spec.resize`` (bilinear, antialiased), centre-crop.

    When the resized image would exceed :data:`RESIZE_FULL_MAX_PIXELS`, only the source
    region under the crop is resampled, at the same scale (same pixels up to rounding), so
    the work and memory are bounded by the crop whatever the aspect ratio.
    """
    width, height = image.size
    crop_h, crop_w = spec.crop
    scale = spec.resize / min(width, height)
    new_w = max(crop_w, round(width * scale))
    new_h = max(crop_h, round(height * scale))
    left = (new_w - crop_w) // 2
    top = (new_h - crop_h) // 2
    if (new_w, new_h) == (width, height):
        if (left, top, crop_w, crop_h) != (0, 0, new_w, new_h):
            image = image.crop((left, top, left + crop_w, top + crop_h))
    elif new_w * new_h > RESIZE_FULL_MAX_PIXELS:
        x_scale, y_scale = width / new_w, height / new_h
        box = (
            left * x_scale,
            top * y_scale,
            (left + crop_w) * x_scale,
            (top + crop_h) * y_scale,
        )
        image = image.resize((crop_w, crop_h), Image.Resampling.BILINEAR, box=box)
    else:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        if (left, top, crop_w, crop_h) != (0, 0, new_w, new_h):
            image = image.crop((left, top, left + crop_w, top + crop_h))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def check_tensor(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Validate one preprocessed ``FP32`` image tensor ``(C, H, W)``.

    Args:
        array: the tensor as sent by the client (already normalised).
        spec: the model's input spec.

    Returns:
        The tensor as contiguous ``float32``.

    Raises:
        BadInput: wrong shape, not real numbers, or non-finite values (also after the
            conversion to ``float32``).
    """
    expected = (spec.channels, *spec.crop)
    if array.shape != expected:
        raise BadInput(f"tensor has shape {list(array.shape)}; this model takes {list(expected)}")
    if array.dtype.kind not in "biuf":
        raise BadInput(f"tensor must hold real numbers, not {array.dtype.kind!r} values")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise BadInput("tensor holds NaN or infinite values")
    return out

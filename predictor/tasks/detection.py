"""Object detection: images of any size in, boxes in the user's pixels out.

Images keep their aspect and are prepared at the size the network resizes them to
(:mod:`.detection_input`); batches hold images of any mix of sizes (the runner,
:mod:`.detection_runner`, hands torchvision's detectors a list); boxes come back in the
prepared image's pixels and are mapped to the image as a viewer shows it, clipped to it
(:mod:`.boxes`).

The per-request parameters are ``score_threshold``, ``max_detections`` and ``classes``; a
batch runs once with the loosest settings of the requests in it, and each request's answer
is filtered to its own (:func:`.boxes.keep`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from predictor.errors import BadInput
from predictor.runtime.engine import BatchRunner
from predictor.store.spec import MAX_DETECTIONS
from predictor.tasks import drawing
from predictor.tasks.base import Item, Task, positive_int
from predictor.tasks.boxes import Detections, keep
from predictor.tasks.detection_input import prepare_image
from predictor.tasks.detection_runner import Frame
from predictor.tasks.images import DecodeLimits

#: Label slots of torchvision's COCO categories that are not classes a client can ask for.
NOT_CLASSES = ("__background__", "N/A")


class Detection(Task):
    """Object detection (``"task": "detection"``)."""

    name = "detection"
    outputs = ("num_detections", "boxes", "scores", "class_ids", "labels")
    parameters = ("score_threshold", "max_detections", "classes")

    def defaults(self) -> dict[str, Any]:
        """``score_threshold`` and ``max_detections`` from the manifest; every class."""
        limits = self.spec.thresholds
        return {
            "score_threshold": limits.score_threshold,
            "max_detections": limits.max_detections,
            "classes": None,
        }

    def check_parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``score_threshold`` 0..1, ``max_detections`` 1..1000, ``classes`` known labels/ids."""
        checked: dict[str, Any] = {}
        if "score_threshold" in values:
            checked["score_threshold"] = _fraction(values["score_threshold"])
        if "max_detections" in values:
            count = positive_int(values["max_detections"], "parameters.max_detections")
            if count > MAX_DETECTIONS:
                raise BadInput(f"parameters.max_detections must be at most {MAX_DETECTIONS}")
            checked["max_detections"] = count
        if "classes" in values:
            checked["classes"] = self.class_ids(values["classes"])
        return checked

    def class_ids(self, value: object) -> tuple[int, ...] | None:
        """Class ids from labels or ids (a list, or text separated by commas); None: all.

        Raises:
            BadInput: an unknown label or id (the message names it).
        """
        if value is None:
            return None
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or len(value) > len(self.spec.labels):
            raise BadInput("parameters.classes must be a list of labels or class ids")
        ids: set[int] = set()
        for entry in value:
            ids.add(self._class_id(entry))
        return tuple(sorted(ids))

    def _class_id(self, entry: object) -> int:
        labels = self.spec.labels
        if isinstance(entry, int) and not isinstance(entry, bool):
            if 0 <= entry < len(labels) and labels[entry] not in NOT_CLASSES:
                return entry
        elif isinstance(entry, str) and entry not in NOT_CLASSES:
            if entry in labels:
                return labels.index(entry)
            if entry.isascii() and entry.isdigit() and int(entry) < len(labels):
                return self._class_id(int(entry))
        shown = repr(entry)[:40] if isinstance(entry, str | int) else type(entry).__name__
        raise BadInput(f"parameters.classes: unknown class {shown}; see the model's labels")

    def prepare(self, payload: bytes | np.ndarray, limits: DecodeLimits) -> Item:
        """Pixels within the size bounds, and the image size to map boxes back to."""
        if not isinstance(payload, bytes):
            raise BadInput("a detection model takes encoded images (the BYTES input 'image')")
        return prepare_image(payload, self.spec.input, limits)

    def batch_input(self, item: Item, parameters: Mapping[str, Any]) -> Any:
        """The pixels with the request's thresholds (the batch runs with the loosest)."""
        return Frame(item.pixels, parameters["score_threshold"], parameters["max_detections"])

    def runner(
        self, module: Any, device: str, dtype: Any, max_batch_size: int, jit: bool, freeze: bool
    ) -> BatchRunner:
        """Torchvision's detector on ``device``, fed lists of differently sized images."""
        from predictor.tasks.detection_runner import DetectionRunner

        return DetectionRunner(module, self.spec.input, device, dtype)

    def postprocess(
        self, rows: Sequence[Any], items: Sequence[Item], parameters: Mapping[str, Any]
    ) -> list[Detections]:
        """Each image's detections, filtered and in its own pixels."""
        labels = self.spec.labels
        results = []
        for row, item in zip(rows, items, strict=True):
            if item.info is None:  # prepare() always sets it: an image without one is a bug
                raise TypeError("a detection item without the image it maps back to")
            results.append(keep(row, item.info, labels, parameters))
        return results

    def counts(self, results: Sequence[Any]) -> list[int]:
        """Detections per image (``predictor_detections_per_image``)."""
        return [len(r.labels) for r in results]

    def encode_v1(self, results: Sequence[Any]) -> dict[str, Any]:
        """``{"predictions": [{"detections": [...], "image_size": [w, h]}, ...]}``."""
        return {
            "predictions": [
                {
                    "detections": [
                        {
                            "box": [round(v, 2) for v in box],
                            "score": float(score),
                            "label": label,
                            "class_id": int(class_id),
                        }
                        for box, score, label, class_id in zip(
                            r.boxes.tolist(),
                            r.scores.tolist(),
                            r.labels,
                            r.class_ids.tolist(),
                            strict=True,
                        )
                    ],
                    "image_size": list(r.image_size),
                }
                for r in results
            ]
        }

    def v2_outputs(self, results: Sequence[Any]) -> dict[str, tuple[str, np.ndarray]]:
        """Per image counts, and ``[N, K]`` rows padded with 0 / -1 / "" (K: the most)."""
        count = len(results)
        width = max((len(r.labels) for r in results), default=0)
        boxes = np.zeros((count, width, 4), np.float32)
        scores = np.zeros((count, width), np.float32)
        class_ids = np.full((count, width), -1, np.int64)
        labels = np.full((count, width), b"", dtype=np.object_)
        for index, r in enumerate(results):
            found = len(r.labels)
            boxes[index, :found] = r.boxes
            scores[index, :found] = r.scores
            class_ids[index, :found] = r.class_ids
            labels[index, :found] = [label.encode() for label in r.labels]
        numbers = np.array([len(r.labels) for r in results], np.int32)
        return {
            "num_detections": ("INT32", numbers),
            "boxes": ("FP32", boxes),
            "scores": ("FP32", scores),
            "class_ids": ("INT64", class_ids),
            "labels": ("BYTES", labels),
        }

    def input_metadata(self) -> list[dict[str, Any]]:
        """Encoded images (BYTES) of any size."""
        spec = self.spec.input
        bounds: dict[str, Any] = {"color": spec.color, "min_size": spec.resize}
        if spec.max_size is not None:
            bounds["max_size"] = spec.max_size
        return [{"name": "image", "datatype": "BYTES", "shape": [-1], "parameters": bounds}]

    def output_metadata(self) -> list[dict[str, Any]]:
        """Counts, boxes (x1, y1, x2, y2 in the image's pixels), scores, class ids, labels."""
        return [
            {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
            {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "class_ids", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ]

    def draw(self, image: Image.Image, result: Any) -> None:
        """Each box in its class's colour, captioned with its label and score."""
        found: Detections = result
        pen = ImageDraw.Draw(image)
        typeface = drawing.font(image)
        width = drawing.line_width(image)
        # Lowest score first, so the best boxes and captions are drawn on top.
        for index in range(len(found.labels) - 1, -1, -1):
            x1, y1, x2, y2 = found.boxes[index].tolist()
            fill = drawing.colour(int(found.class_ids[index]))
            pen.rectangle((x1, y1, x2, y2), outline=fill, width=width)
            text = f"{found.labels[index]} {float(found.scores[index]):.2f}"
            _, top, _, bottom = pen.textbbox((0, 0), text, font=typeface)
            above = y1 - (bottom - top) - 4
            drawing.caption(pen, (x1 + 2, above if above >= 0 else y1 + 2), text, fill, typeface)

    def preprocessing(self) -> dict[str, Any]:
        """How images are prepared: colour, the size bounds, aspect kept."""
        spec = self.spec.input
        return {
            "color": spec.color,
            "min_size": spec.resize,
            "max_size": spec.max_size,
            "aspect": "kept",
            "background": spec.background,
        }


def _fraction(value: object) -> float:
    """A number from 0 to 1 (or its decimal text)."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and len(value) <= 32:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not 0.0 <= number <= 1.0:  # NaN fails both comparisons
        raise BadInput("parameters.score_threshold must be a number from 0 to 1")
    return number

"""A detector's answer for one image: boxes filtered to a request and mapped to its pixels.

The runner answers boxes in the pixels the network was given; :func:`keep` filters them to a
request's ``score_threshold``, ``classes`` and ``max_detections``, sorts them best first,
maps them to the image as a viewer shows it (``ImageInfo``: width / model width) and clips
them to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.tasks.base import ImageInfo


@dataclass(frozen=True)
class Detections:
    """The detections of one image, best first, in the image's (viewer) pixels.

    Attributes:
        boxes: ``float32`` ``[K, 4]``: ``x1, y1, x2, y2``.
        scores: ``float32`` ``[K]``.
        class_ids: ``int64`` ``[K]``.
        labels: the class labels.
        image_size: ``(width, height)`` of the image as a viewer shows it.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]
    image_size: tuple[int, int]


def keep(
    row: tuple[np.ndarray, np.ndarray, np.ndarray],
    info: ImageInfo,
    labels: Sequence[str],
    parameters: Mapping[str, Any],
) -> Detections:
    """One image's detections, filtered to the request's settings and mapped to its pixels.

    Args:
        row: the runner's ``(boxes [K, 4], scores [K], class_ids [K])`` in the prepared
            image's pixels.
        info: the image they map back to.
        labels: class labels by id.
        parameters: ``score_threshold``, ``max_detections``, ``classes`` (ids or None).
    """
    boxes, scores, class_ids = row
    wanted = scores >= parameters["score_threshold"]
    classes = parameters.get("classes")
    if classes is not None:
        wanted &= np.isin(class_ids, np.fromiter(classes, np.int64, len(classes)))
    order = np.flatnonzero(wanted)
    order = order[np.argsort(-scores[order], kind="stable")][: parameters["max_detections"]]
    mapped = boxes[order].astype(np.float64) * np.array(
        [info.width / info.model_width, info.height / info.model_height] * 2
    )
    mapped = np.clip(mapped, 0, [info.width, info.height, info.width, info.height])
    ids = class_ids[order].astype(np.int64)
    names = tuple(labels[i] if 0 <= i < len(labels) else str(i) for i in ids.tolist())
    return Detections(
        mapped.astype(np.float32).reshape(-1, 4),
        scores[order].astype(np.float32),
        ids,
        names,
        (info.width, info.height),
    )

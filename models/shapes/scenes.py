"""Synthetic scenes for the shapes demo detector: circles, squares and triangles.

Each scene is 160-640 px a side on a random background (noise, a gradient or a flat
colour) and holds 1-4 shapes filled with random colours that stand out from it, each
15-45% of the image's short side, overlapping little. Used to train the demo
(``train.py``), for its held-out score, its sample images and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: The classes, by class id (0 is the background, as in torchvision's detectors).
LABELS = ("__background__", "circle", "square", "triangle")


@dataclass
class Scene:
    """An image and where its shapes are.

    Attributes:
        image: the RGB image.
        boxes: ``[K, 4]`` ``x1, y1, x2, y2`` in pixels.
        classes: ``[K]`` class ids (1 circle, 2 square, 3 triangle).
    """

    image: Image.Image
    boxes: np.ndarray
    classes: np.ndarray


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Noise around a colour, a two-colour gradient, or a flat colour."""
    kind = rng.integers(3)
    base = rng.integers(0, 256, 3)
    if kind == 0:
        noise = rng.normal(0, 28, (height, width, 3))
        pixels = np.clip(base + noise, 0, 255)
    elif kind == 1:
        other = rng.integers(0, 256, 3)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        t = xs * np.cos(angle) + ys * np.sin(angle)
        t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
        pixels = base + (other - base) * t[..., None]
    else:
        pixels = np.broadcast_to(base, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least 120 (summed over RGB) from the pixels it covers."""
    for _ in range(100):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - under).sum() >= 120:
            break
    return int(colour[0]), int(colour[1]), int(colour[2])


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    best = 0.0
    for other in others:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        if w > 0 and h > 0:
            inter = w * h
            union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (
                other[3] - other[1]
            )
            best = max(best, inter / (union - inter))
    return best


def draw(image: Image.Image, kind: int, box: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw a filled shape of class ``kind`` filling ``box`` (x1, y1, x2, y2)."""
    pen = ImageDraw.Draw(image)
    x1, y1, x2, y2 = (float(v) for v in box)
    if kind == 1:
        pen.ellipse((x1, y1, x2, y2), fill=colour)
    elif kind == 2:
        pen.rectangle((x1, y1, x2, y2), fill=colour)
    else:
        pen.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def scene(rng: np.random.Generator, width: int | None = None, height: int | None = None) -> Scene:
    """A random scene (160-640 px a side unless given) with 1-4 shapes."""
    width = width or int(rng.integers(160, 641))
    height = height or int(rng.integers(160, 641))
    image = background(rng, width, height)
    pixels = np.asarray(image)
    short = min(width, height)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(30):
            side = rng.uniform(0.15, 0.45) * short
            kind = int(rng.integers(1, 4))
            w = side * (1.15 if kind == 3 else 1.0)  # triangles are a little wider
            x1 = rng.uniform(0, width - w)
            y1 = rng.uniform(0, height - side)
            box = np.array([x1, y1, x1 + w, y1 + side])
            if _iou(box, boxes) < 0.1:
                under = pixels[int(y1) : int(y1 + side), int(x1) : int(x1 + w)].reshape(-1, 3)
                draw(image, kind, box, _colour(rng, under.mean(axis=0)))
                boxes.append(box)
                classes.append(kind)
                break
    return Scene(image, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """The area under a precision/recall curve (all points, precision made monotone)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box against ``[K, 4]`` boxes."""
    if len(boxes) == 0:
        return np.zeros(0)
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / (area + areas - inter))


def mean_ap(
    truths: list[tuple[np.ndarray, np.ndarray]],
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou: float = 0.5,
) -> dict[str, float]:
    """mAP@``iou`` over the shape classes (VOC style, all points), and each class's AP.

    Args:
        truths: per image, ``(boxes [K, 4], classes [K])``.
        found: per image, ``(boxes [D, 4], scores [D], classes [D])``.
        iou: the overlap a detection needs to match a true box.
    """
    result: dict[str, float] = {}
    for kind in range(1, len(LABELS)):
        scored: list[tuple[float, bool]] = []
        total = 0
        for (true_boxes, true_classes), (boxes, scores, classes) in zip(truths, found, strict=True):
            mine = true_boxes[true_classes == kind]
            total += len(mine)
            used = np.zeros(len(mine), bool)
            for index in np.argsort(-scores):
                if classes[index] != kind:
                    continue
                overlaps = box_iou(boxes[index], mine)
                best = int(np.argmax(overlaps)) if len(overlaps) else -1
                hit = best >= 0 and overlaps[best] >= iou and not used[best]
                if hit:
                    used[best] = True
                scored.append((float(scores[index]), hit))
        scored.sort(key=lambda pair: -pair[0])
        hits = np.cumsum([hit for _, hit in scored]) if scored else np.zeros(0)
        recall = hits / max(1, total)
        precision = hits / np.arange(1, len(scored) + 1) if scored else np.zeros(0)
        result[LABELS[kind]] = average_precision(recall, precision)
    result["mAP"] = float(np.mean([result[label] for label in LABELS[1:]]))
    return result

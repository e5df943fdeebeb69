"""Annotated images: a task's result drawn onto the image the client sent.

The image is decoded again at full size, as a viewer shows it (EXIF orientation applied),
under the same pixel limit and memory budget as any decode, and the task draws its result
on it (:meth:`~predictor.tasks.base.Task.draw`): boxes, labels and scores for a detector,
the top-k labels for a classifier. Encoded as JPEG (PNG when asked). Runs in the decode
pool, never on the event loop.
"""

from __future__ import annotations

import io
from typing import Any

from predictor.tasks.base import Task
from predictor.tasks.images import DecodeLimits, open_image

#: The media types an annotated image can be answered in.
MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}


def media_type(accept: str) -> str:
    """``image/png`` when the ``Accept`` header asks for it before JPEG, else ``image/jpeg``."""
    for part in accept.split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind in MEDIA_TYPES:
            return kind
    return "image/jpeg"


def render(data: bytes, task: Task, result: Any, limits: DecodeLimits, media: str) -> bytes:
    """The image in ``data`` with ``result`` drawn on it, encoded as ``media``.

    Raises:
        BadInput / TooLarge / MemoryFull: as for any decode (:func:`open_image`).
    """
    with open_image(data, limits, "RGB", 255, None) as decoded:
        image = decoded.image
        task.draw(image, result)
        out = io.BytesIO()
        if MEDIA_TYPES[media] == "JPEG":
            image.save(out, "JPEG", quality=90)
        else:
            image.save(out, "PNG", compress_level=3)
    return out.getvalue()

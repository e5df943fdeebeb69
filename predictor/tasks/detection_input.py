"""A detector's images: decoded small, aspect kept, at the size the network resizes to.

Each image is decoded (a JPEG DCT-domain downscaled, so a 12 MP photo is never carried at
full size) and resized to what the network would resize it to anyway
(:meth:`InputSpec.fit`), keeping the full image's size as a viewer shows it (EXIF
orientation applied) to map boxes back.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from predictor.errors import BadInput
from predictor.store.spec import InputSpec
from predictor.tasks.base import ImageInfo, Item
from predictor.tasks.images import DecodeLimits, open_image

#: The shortest side (in the network's pixels) an image may have; thinner ones are 400.
MIN_SIDE = 4


def prepare_image(data: bytes, spec: InputSpec, limits: DecodeLimits) -> Item:
    """Decode, orient and downscale one image to within the network's size bounds.

    Args:
        data: the encoded image.
        spec: colour mode, background and the size bounds (:meth:`InputSpec.fit`).
        limits: the pixel limit and memory budget.

    Returns:
        The pixels and the image they map back to.
    """

    def shorter_side(width: int, height: int) -> int:
        return math.ceil(min(width, height) * spec.fit(width, height))

    with open_image(data, limits, spec.color, spec.background, shorter_side) as decoded:
        image, width, height = decoded.image, decoded.width, decoded.height
        scale = spec.fit(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(target) < MIN_SIDE:
            raise BadInput(
                f"image is {width}x{height}: too thin to detect in (each side must be at least "
                f"{MIN_SIDE} px once within the model's {spec.resize} px bounds)"
            )
        try:
            if image.size != target:
                image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)
            pixels = np.array(image, dtype=np.uint8)  # writable: torch takes it as is
        except MemoryError:
            raise
        except Exception as exc:  # a degenerate size Pillow cannot resample
            raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return Item(np.ascontiguousarray(pixels), ImageInfo(width, height, target[0], target[1]))

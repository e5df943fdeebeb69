"""Image bytes to model-ready pixels, per image: decode, validate, orient, resize, crop.

Pure functions, safe to run in worker threads. The result is an ``uint8`` array in
height x width x channels layout; normalisation (mean/std, dtype) happens on the device in
batch, so four times fewer bytes cross to the GPU and channels-last layout comes for free.

Every failure is a :class:`~predictor.errors.BadInput` (400) or
:class:`~predictor.errors.TooLarge` (413) with a one-line message; nothing else escapes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from predictor.errors import BadInput, TooLarge
from predictor.model_store import InputSpec

#: Formats accepted; anything else Pillow could open (e.g. TIFF, GIF) is refused.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

# Pillow's own bomb guard is replaced by the explicit --max-image-pixels check below.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Decode one encoded image into the model's input pixels.

    Args:
        data: the encoded image (JPEG, PNG, WebP or BMP).
        spec: the model's input spec (colour mode, resize, crop).
        max_pixels: images with more pixels are refused from their header, before decoding.

    Returns:
        ``uint8`` array of shape ``(crop_h, crop_w, channels)``.

    Raises:
        BadInput: empty, truncated, corrupt or unsupported data.
        TooLarge: the header announces more than ``max_pixels`` pixels.
    """
    if not data:
        raise BadInput("empty image payload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise BadInput(f"image has invalid size {width}x{height}")
            if width * height > max_pixels:
                raise TooLarge(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}"
                )
            _draft(image, spec)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            image = to_mode(image, spec)
            pixels = resize_crop(image, spec)
    except (BadInput, TooLarge):
        raise
    except UnidentifiedImageError:
        raise BadInput(f"payload is not a supported image ({', '.join(FORMATS)})") from None
    except Exception as exc:  # Pillow raises many types on hostile input; all are bad input
        # The message is fixed text: Pillow's own may quote bytes of the payload.
        raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None
    return pixels


def _draft(image: Image.Image, spec: InputSpec) -> None:
    """Ask libjpeg for a DCT-domain downscale that still covers the resize target."""
    if image.format != "JPEG":
        return
    width, height = image.size
    scale = spec.resize / min(width, height)
    if scale < 0.5:
        target = (max(1, int(width * scale)), max(1, int(height * scale)))
        image.draft(spec.color if image.mode in ("RGB", "L") else None, target)


def to_mode(image: Image.Image, spec: InputSpec) -> Image.Image:
    """Convert any Pillow mode to the model's colour mode.

    Alpha is composited over ``spec.background``; 16-bit and 32-bit grayscale are scaled
    (not clipped) to 8 bits; CMYK, palette and YCbCr go through Pillow's conversions.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        scaled = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled)
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (spec.background,) * 3 + (255,))
        image = Image.alpha_composite(backdrop, rgba).convert("RGB")
    return image if image.mode == spec.color else image.convert(spec.color)


def resize_crop(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Resize the shorter side to ``spec.resize`` (bilinear, antialiased), centre-crop."""
    width, height = image.size
    crop_h, crop_w = spec.crop
    scale = spec.resize / min(width, height)
    new_w = max(crop_w, round(width * scale))
    new_h = max(crop_h, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = (new_w - crop_w) // 2
    top = (new_h - crop_h) // 2
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
        BadInput: wrong shape or non-finite values.
    """
    expected = (spec.channels, *spec.crop)
    if array.shape != expected:
        raise BadInput(f"tensor has shape {list(array.shape)}; this model takes {list(expected)}")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        raise BadInput("tensor holds NaN or infinite values")
    return out

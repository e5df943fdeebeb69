"""Image bytes to model-ready pixels, per image: decode, validate, orient, resize, crop.

Pure functions, safe to run in worker threads. The result is an ``uint8`` array in
height x width x channels layout; normalisation (mean/std, dtype) happens on the device in
batch, so four times fewer bytes cross to the GPU and channels-last layout comes for free.

Every failure a client can cause is a :class:`~predictor.errors.BadInput` (400) or
:class:`~predictor.errors.TooLarge` (413) with a one-line message that never quotes the
payload; only ``MemoryError`` (the server's own limit, a 500) passes through. Work and
memory per image are bounded before decoding: the declared size against ``max_pixels``
(WebP from its header, as libwebp allocates the canvas on open), the number of JPEG scans,
and a resize that never builds more than the crop's region of a very thin image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from predictor.errors import BadInput, TooLarge
from predictor.model_store import InputSpec

#: Formats accepted; anything else Pillow could open (e.g. TIFF, GIF) is refused.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

# Pillow's own bomb guard is replaced by the explicit --max-image-pixels check below.
Image.MAX_IMAGE_PIXELS = None

#: Progressive JPEGs holding more scans than this are refused before decoding: every scan
#: passes over the whole image, so a small file of many tiny scans costs minutes of CPU.
#: Encoders write about 10 (libjpeg's default script) and rarely more than 64.
MAX_JPEG_SCANS = 128

#: Above this many pixels, the resize works on the crop's source region only, so a very
#: thin image (1 x 40M pixels) never becomes a multi-gigabyte intermediate.
RESIZE_FULL_MAX_PIXELS = 1 << 22


def decode_image(data: bytes, spec: InputSpec, max_pixels: int) -> np.ndarray:
    """Decode one encoded image into the model's input pixels.

    Args:
        data: the encoded image (JPEG, PNG, WebP or BMP).
        spec: the model's input spec (colour mode, resize, crop).
        max_pixels: images with more pixels are refused from their header, before decoding.

    Returns:
        ``uint8`` array of shape ``(crop_h, crop_w, channels)``.

    Raises:
        BadInput: empty, truncated, corrupt or unsupported data; a JPEG of more than
            :data:`MAX_JPEG_SCANS` scans.
        TooLarge: the header announces more than ``max_pixels`` pixels.
    """
    if not data:
        raise BadInput("empty image payload")
    declared = _webp_canvas(data)
    if declared is not None:
        _check_pixels(*declared, max_pixels)
    if data[:2] == b"\xff\xd8":
        # In entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so this
        # counts start-of-scan markers (plus any in an embedded thumbnail).
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise BadInput(f"JPEG holds {scans} scans; the limit is {MAX_JPEG_SCANS}")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
        _check_pixels(*image.size, max_pixels)
        _draft(image, spec)
        image.load()
        image = _orient(image)
        image = to_mode(image, spec)
        pixels = resize_crop(image, spec)
    except (BadInput, TooLarge, MemoryError):
        raise  # MemoryError is the server's limit, not the client's fault: a 500
    except UnidentifiedImageError:
        raise BadInput(f"payload is not a supported image ({', '.join(FORMATS)})") from None
    except Exception as exc:  # Pillow raises many types on hostile input; all are bad input
        # The message is fixed text: Pillow's own may quote bytes of the payload.
        raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None
    return pixels


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise BadInput(f"image has invalid size {width}x{height}")
    if width * height > max_pixels:
        raise TooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """The size a WebP file declares in its first chunk, read before Pillow sees it.

    Pillow opens every WebP through libwebp's animation decoder, which allocates the whole
    canvas (up to 16384 x 16384 x 4 bytes, twice) when the file is opened: the pixel limit
    has to be applied to the header first. None when ``data`` is not a WebP.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1, height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":  # lossless: 14-bit width - 1, height - 1 after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":  # lossy: 14-bit width, height after the frame tag and start code
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return max(width, 1), max(height, 1)
    return None


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation."""
    return ImageOps.exif_transpose(image) or image


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

    Alpha (and a ``transparency`` colour of palette, grayscale or RGB images) is composited
    over ``spec.background``; 16-bit and 32-bit grayscale are scaled (not clipped) to 8 bits;
    CMYK, palette and YCbCr go through Pillow's conversions.

    Raises:
        BadInput: a mode Pillow cannot convert.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        with np.errstate(invalid="ignore"):  # signalling NaNs in "F" images
            array = np.nan_to_num(
                np.asarray(image, dtype=np.float64), nan=0.0, posinf=65535.0, neginf=0.0
            )
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        scaled = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled)
        mode = "L"
    try:
        if mode in ("P", "L", "RGB") and "transparency" in image.info:
            image = image.convert("RGBA")
            mode = image.mode
        elif mode == "P":
            image = image.convert("RGB")
            mode = image.mode
        if mode == "La":
            image = image.convert("LA")  # Pillow converts premultiplied La only to LA
            mode = image.mode
        if mode in ("RGBA", "LA", "PA", "RGBa"):
            rgba = image.convert("RGBA")
            backdrop = Image.new("RGBA", rgba.size, (spec.background,) * 3 + (255,))
            image = Image.alpha_composite(backdrop, rgba).convert("RGB")
        if image.mode == spec.color:
            return image
        if image.mode not in ("1", "L", "RGB", "RGBX", "CMYK", "YCbCr"):
            image = image.convert("RGB")  # e.g. LAB and HSV convert only to and from RGB
        return image.convert(spec.color)
    except ValueError:
        raise BadInput(f"cannot convert a {mode} image to {spec.color}") from None


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

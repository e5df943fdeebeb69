"""Image bytes to an oriented image in the model's colour mode: decode, validate, orient.

Shared by every task (each resizes the result its own way). Pure functions, safe to run in
worker threads.

Every failure a client can cause is a :class:`~predictor.errors.BadInput` (400) or
:class:`~predictor.errors.TooLarge` (413) with a one-line message that never quotes the
payload; only ``MemoryError`` (the server's own limit, a 500) passes through. Work and
memory per image are bounded before decoding: the declared size against ``max_pixels``
(WebP from its header, as libwebp allocates the canvas on open) and the number of JPEG
scans; a JPEG much larger than the model's input is decoded DCT-domain downscaled.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from predictor.errors import BadInput, TooLarge

#: Formats accepted; anything else Pillow could open (e.g. TIFF, GIF) is refused.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

#: Progressive JPEGs holding more scans than this are refused before decoding: every scan
#: passes over the whole image, so a small file of many tiny scans costs minutes of CPU.
#: Encoders write about 10 (libjpeg's default script) and rarely more than 64.
MAX_JPEG_SCANS = 128


def lift_pillow_bomb_guard() -> None:
    """Make ``max_pixels`` (``--max-image-pixels``) the only pixel limit.

    Pillow refuses images above twice its own ``MAX_IMAGE_PIXELS`` (about 179 M pixels) as
    a "decompression bomb" when it opens them, whatever the server's limit says. Process-
    wide, so the server calls it once, in ``serve()``; without it, such images are still
    refused, as too large, with Pillow's wording instead of this module's.
    """
    Image.MAX_IMAGE_PIXELS = None


def open_image(
    data: bytes, max_pixels: int, color: str, background: int, shorter_side: int | None
) -> Image.Image:
    """Decode one encoded image, oriented as a viewer shows it, in the colour mode ``color``.

    ``max_pixels`` is applied from the header, before decoding (see
    :func:`lift_pillow_bomb_guard` for Pillow's own limit).

    Args:
        data: the encoded image (JPEG, PNG, WebP or BMP).
        max_pixels: images with more pixels are refused from their header, before decoding.
        color: ``RGB`` or ``L``.
        background: grey level transparent pixels are composited over.
        shorter_side: the size the caller resizes the shorter side to, if known: a JPEG is
            then decoded DCT-domain downscaled (at least this big), never at full size.

    Returns:
        The loaded image.

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
        if shorter_side is not None:
            _draft(image, shorter_side, color)
        image.load()
        image = _orient(image)
        return to_mode(image, color, background)
    except (BadInput, TooLarge, MemoryError):
        raise  # MemoryError is the server's limit, not the client's fault: a 500
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "larger than Pillow allows"
        raise TooLarge(f"image is {size}; the limit is {max_pixels}") from None
    except UnidentifiedImageError:
        raise BadInput(f"payload is not a supported image ({', '.join(FORMATS)})") from None
    except Exception as exc:  # Pillow raises many types on hostile input; all are bad input
        # The message is fixed text: Pillow's own may quote bytes of the payload.
        raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None


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


def _draft(image: Image.Image, shorter_side: int, color: str) -> None:
    """Ask libjpeg for a DCT-domain downscale that still covers the resize target."""
    if image.format != "JPEG":
        return
    width, height = image.size
    scale = shorter_side / min(width, height)
    if scale < 0.5:
        target = (max(1, int(width * scale)), max(1, int(height * scale)))
        image.draft(color if image.mode in ("RGB", "L") else None, target)


def to_mode(image: Image.Image, color: str, background: int = 255) -> Image.Image:
    """Convert any Pillow mode to the colour mode ``color`` (``RGB`` or ``L``).

    Alpha (and a ``transparency`` colour of palette, grayscale or RGB images) is composited
    over ``background``; 16-bit and 32-bit grayscale are scaled (not clipped) to 8 bits;
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
            backdrop = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
            image = Image.alpha_composite(backdrop, rgba).convert("RGB")
        if image.mode == color:
            return image
        if image.mode not in ("1", "L", "RGB", "RGBX", "CMYK", "YCbCr"):
            image = image.convert("RGB")  # e.g. LAB and HSV convert only to and from RGB
        return image.convert(color)
    except ValueError:
        raise BadInput(f"cannot convert a {mode} image to {color}") from None

"""Image bytes to an oriented image in the model's colour mode: decode, validate, orient.

Shared by every task (each resizes the result its own way). Pure functions, safe to run in
worker threads.

Every failure a client can cause is a :class:`~predictor.errors.BadInput` (400) or
:class:`~predictor.errors.TooLarge` (413) with a one-line message that never quotes the
payload; only ``MemoryError`` (the server's own limit, a 500) passes through. Work and
memory per image are bounded before decoding: the declared size against ``max_pixels``
(WebP from its header, as libwebp allocates the canvas on open), and the memory the decode
needs is held against the process's budget; JPEGs are checked strictly and a JPEG much
larger than the model's input is decoded DCT-domain downscaled (:mod:`.jpeg`).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from predictor.errors import BadInput, Overloaded, TooLarge
from predictor.runtime.budget import Held, MemoryBudget
from predictor.tasks import jpeg

#: Formats accepted; anything else Pillow could open (e.g. TIFF, GIF) is refused.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

#: Kept here for callers of this module; see :mod:`predictor.tasks.jpeg`.
MAX_JPEG_SCANS = jpeg.MAX_JPEG_SCANS


def lift_pillow_bomb_guard() -> None:
    """Make ``max_pixels`` (``--max-image-pixels``) the only pixel limit.

    Pillow refuses images above twice its own ``MAX_IMAGE_PIXELS`` (about 179 M pixels) as
    a "decompression bomb" when it opens them, whatever the server's limit says. Process-
    wide, so the server calls it once, in ``serve()``; without it, such images are still
    refused, as too large, with Pillow's wording instead of this module's.
    """
    Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodeLimits:
    """What bounds the decoding of one image.

    Attributes:
        max_pixels: images with more pixels are refused from their header (413).
        budget: the process's memory budget the decode is held against, if any.
    """

    max_pixels: int
    budget: MemoryBudget | None = None


#: The shorter side a caller will resize an image to: a number, or a function of the full
#: image's ``(width, height)`` as a viewer shows it (None: unknown, decode at full size).
ShorterSide = int | Callable[[int, int], int] | None


@dataclass(frozen=True)
class Decoded:
    """A decoded image and the size of the full image as a viewer shows it.

    Attributes:
        image: the pixels, oriented, in the colour mode asked for (a JPEG may come
            DCT-domain downscaled, so smaller than ``width`` x ``height``).
        width: width of the full image (EXIF orientation applied).
        height: its height.
    """

    image: Image.Image
    width: int
    height: int


@contextlib.contextmanager
def open_image(
    data: bytes, limits: DecodeLimits, color: str, background: int, shorter_side: ShorterSide
) -> Iterator[Decoded]:
    """Decode one encoded image, oriented as a viewer shows it, in the colour mode ``color``.

    A context manager: the memory the decode needs, costed from the header before decoding,
    is held against the budget until the ``with`` block ends. ``limits.max_pixels`` is
    applied from the header too (see :func:`lift_pillow_bomb_guard` for Pillow's own).

    Args:
        data: the encoded image (JPEG, PNG, WebP or BMP).
        limits: the pixel limit and the memory budget.
        color: ``RGB`` or ``L``.
        background: grey level transparent pixels are composited over.
        shorter_side: the size the caller resizes the shorter side to, if known (or the
            function giving it from the full image's size): a JPEG is then decoded
            DCT-domain downscaled (at least this big), never at full size.

    Yields:
        The loaded image and the full image's size.

    Raises:
        BadInput: empty, truncated, corrupt or unsupported data (JPEGs strictly, see
            :mod:`predictor.tasks.jpeg`).
        TooLarge: the header announces more than ``limits.max_pixels`` pixels.
        MemoryFull: the memory budget cannot hold the decode now (503).
    """
    if not data:
        raise BadInput("empty image payload")
    held = Held(limits.budget, "decoding this image")
    try:
        if data[:2] == b"\xff\xd8":
            image, size = _open_jpeg(data, limits, shorter_side, held)
        else:
            image = _open_other(data, limits, held)
            size = image.size
        yield Decoded(to_mode(image, color, background), *size)
    finally:
        held.give_back()


def _open_jpeg(
    data: bytes, limits: DecodeLimits, shorter_side: ShorterSide, held: Held
) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded, oriented JPEG and the full image's size as a viewer shows it."""
    jpeg.check_structure(data)
    width, height, colorspace = jpeg.header(data)
    _check_pixels(width, height, limits.max_pixels)
    orientation = jpeg.orientation(data)
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    shorter = shorter_side(*size) if callable(shorter_side) else shorter_side
    scale = 1.0 if shorter is None else min(1.0, shorter / max(1, min(width, height)))
    bands = 1 if colorspace == "Gray" else 4 if colorspace in ("CMYK", "YCCK") else 3
    # The decoded image (libjpeg scales by 1/8 steps, so at most twice the target) and the
    # copies orienting and converting it make.
    held.take(_cost(width, height, 2 * bands, min(1.0, 2 * scale)))
    image = jpeg.decode(data, colorspace, shorter)
    return jpeg.orient(image, orientation), size


def _open_other(data: bytes, limits: DecodeLimits, held: Held) -> Image.Image:
    declared = _webp_canvas(data)
    if declared is not None:
        _check_pixels(*declared, limits.max_pixels)
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
        _check_pixels(*image.size, limits.max_pixels)
        held.take(_cost(*image.size, _bytes_per_pixel(image), 1.0))
        image.load()
        return _orient(image)
    except (BadInput, TooLarge, MemoryError, Overloaded):
        raise  # MemoryError is the server's limit, not the client's fault: a 500
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "larger than Pillow allows"
        raise TooLarge(f"image is {size}; the limit is {limits.max_pixels}") from None
    except UnidentifiedImageError:
        raise BadInput(f"payload is not a supported image ({', '.join(FORMATS)})") from None
    except Exception as exc:  # Pillow raises many types on hostile input; all are bad input
        # The message is fixed text: Pillow's own may quote bytes of the payload.
        raise BadInput(f"corrupt or truncated image ({type(exc).__name__})") from None


def _bytes_per_pixel(image: Image.Image) -> int:
    """Bytes per pixel a decode holds at its peak (the copies :func:`to_mode` makes).

    Deep modes (16- and 32-bit) pay for the image, the float32 array scaling it to 8 bits,
    the 8-bit result and its RGB copy; images with alpha for the RGBA copy, the backdrop,
    the composite and the RGB result; others for the image and one converted copy.
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return 4 + 4 + 1 + 3
    if mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        return 4 * 4 + 3
    return 2 * {"1": 1, "L": 1, "P": 4}.get(mode, 4)


def _cost(width: int, height: int, bytes_per_pixel: int, scale: float) -> int:
    """Bytes a decode of ``width`` x ``height`` holds, decoded at ``scale``."""
    return math.ceil(width * scale) * math.ceil(height * scale) * bytes_per_pixel


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
        # One float32 working copy, scaled in place (a 40-megapixel image is 160 MB of it).
        with np.errstate(invalid="ignore"):  # signalling NaNs in "F" images
            array = np.array(image, dtype=np.float32)
            np.nan_to_num(array, copy=False, nan=0.0, posinf=65535.0, neginf=0.0)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array *= np.float32(255.0 / top)
        np.clip(np.rint(array, out=array), 0, 255, out=array)
        image = Image.fromarray(array.astype(np.uint8))
        del array
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

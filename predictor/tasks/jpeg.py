"""JPEG, decoded strictly: a corrupt or incomplete file is refused, never guessed at.

libjpeg recovers from damaged data with a warning (a truncated scan becomes grey, random
entropy-coded data becomes noise, a frame header larger than its scans is padded) and
Pillow passes the result on as if nothing happened; a model then answers confidently about
an image that does not exist. Here the file's structure is walked first (segments by their
length, so metadata holding ``FF DA`` bytes counts no scans; the number of scans is
bounded; the frame must be one libjpeg-turbo decodes), then libjpeg-turbo decodes it
through ``simplejpeg`` with warnings as errors, DCT-domain downscaled when the model's
input is much smaller than the photo. CMYK files decode with Pillow (libjpeg-turbo cannot
convert them) after the same strict check.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
import simplejpeg
from PIL import Image

from predictor.errors import BadInput

#: Progressive JPEGs holding more scans than this are refused before decoding: every scan
#: passes over the whole image, so a small file of many tiny scans costs minutes of CPU.
#: Encoders write about 10 (libjpeg's default script) and rarely more than 64.
MAX_JPEG_SCANS = 128
#: Frame types decoded: baseline, extended and progressive Huffman, and arithmetic coding.
_FRAMES = {
    0xC0: "baseline",
    0xC1: "extended",
    0xC2: "progressive",
    0xC9: "arithmetic",
    0xCA: "arithmetic progressive",
}
#: Lossless and hierarchical frames: not decoded faithfully by libjpeg-turbo here.
_REFUSED_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def check_structure(data: bytes) -> None:
    """Walk the marker segments: frame type, scan count, and an image that ends.

    Raises:
        BadInput: a segment runs past the end, the frame is not one decoded faithfully,
            there are more than :data:`MAX_JPEG_SCANS` scans, or no scan is there.
    """
    scans = 0
    for marker in _markers(data):
        if marker in _REFUSED_FRAMES:
            raise BadInput(f"JPEG coding (SOF{marker - 0xC0}) is not supported")
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise BadInput(f"JPEG holds more than {MAX_JPEG_SCANS} scans")
    if scans == 0:
        raise BadInput("truncated JPEG: no image data")


def _markers(data: bytes) -> Iterator[int]:
    """The markers after SOI, up to EOI (segments skipped by length, scans to a marker)."""
    position, size = 2, len(data)
    while position + 1 < size:
        if data[position] != 0xFF:
            raise BadInput("corrupt JPEG: bytes between segments")
        marker = data[position + 1]
        position += 1 if marker == 0xFF else 2  # 0xFF 0xFF: a fill byte
        if marker in (0xFF, *_STANDALONE):
            continue
        if marker == 0xD9:  # EOI
            return
        length = int.from_bytes(data[position : position + 2], "big")
        if length < 2 or position + length > size:
            raise BadInput("truncated JPEG: a segment runs past the end of the file")
        yield marker
        position += length
        if marker == 0xDA:  # SOS: skip the entropy-coded data to the next marker
            position = _end_of_entropy_data(data, position)


def _end_of_entropy_data(data: bytes, position: int) -> int:
    """The offset of the marker after a scan's entropy-coded data."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1  # stuffed byte, restart marker, or fill
            continue
        return position


def header(data: bytes) -> tuple[int, int, str]:
    """``(width, height, colorspace)`` from the frame header.

    Raises:
        BadInput: the header cannot be read.
    """
    try:
        height, width, colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        raise BadInput("corrupt JPEG: unreadable frame header") from None
    return int(width), int(height), str(colorspace)


def decode(data: bytes, colorspace: str, shorter_side: int | None) -> Image.Image:
    """Decode strictly, scaled down in the DCT domain to at least ``shorter_side``.

    Returns the image as stored (before EXIF orientation), ``RGB`` or ``L``, or ``CMYK``
    for CMYK and YCCK files.

    Raises:
        BadInput: the decoder reports the data as corrupt or incomplete.
    """
    width, height, _ = header(data)
    min_width = min_height = 0
    if shorter_side is not None:
        scale = shorter_side / max(1, min(width, height))
        if scale < 1:
            min_width, min_height = math.ceil(width * scale), math.ceil(height * scale)
    cmyk = colorspace in ("CMYK", "YCCK")
    target = "CMYK" if cmyk else "GRAY" if colorspace == "Gray" else "RGB"
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace=target, min_width=min_width, min_height=min_height, strict=True
        )
    except ValueError as exc:
        raise BadInput(f"corrupt JPEG: {_reason(exc)}") from None
    if cmyk:  # Pillow knows Adobe's inverted CMYK; the strict pass above vouched for the data
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=("JPEG",))
            if shorter_side is not None and min_width:
                image.draft("CMYK", (min_width, min_height))
            image.load()
        except Exception as exc:  # Pillow's own reading of a file libjpeg-turbo accepted
            raise BadInput(f"corrupt JPEG ({type(exc).__name__})") from None
        return image
    array = np.ascontiguousarray(pixels if target == "RGB" else pixels[:, :, 0])
    return Image.fromarray(array, "RGB" if target == "RGB" else "L")


def orientation(data: bytes) -> int:
    """The EXIF orientation (1-8; 1 when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            value = image.getexif().get(0x0112, 1)
    except Exception:  # an unreadable EXIF block: the image stands as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(image: Image.Image, value: int) -> Image.Image:
    """The image as a viewer shows it, given its EXIF orientation."""
    method = _ORIENTATION.get(value)
    return image if method is None else image.transpose(method)


def _reason(exc: ValueError) -> str:
    """Libjpeg's own wording, one line, without quoting data (its messages are fixed text)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "undecodable data"
    return text[:120]

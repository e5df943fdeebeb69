"""Small valid images of every supported format and mode, and header surgery on them.

Used by the property tests, the fuzz seed corpus (``make_seeds.py``) and the security
tests. Everything is deterministic: the same bytes on every run.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

#: Formats the predictor accepts, as Pillow names them.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode a Pillow image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pattern(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An asymmetric RGB test pattern: gradients, one bright block, a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / max(1, width - 1)
    g = 255 * y / max(1, height - 1)
    b = 127 + 100 * np.sin((x + 2 * y) / 5.0)
    pixels = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, size=(height, width, 3))
    pixels[: height // 3, : width // 4] = (250, 20, 20)  # top-left marker block
    return np.clip(pixels, 0, 255).astype(np.uint8)


def exif_bytes(orientation: int) -> bytes:
    """An EXIF block holding only the orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def oriented(image: Image.Image, orientation: int) -> Image.Image:
    """The stored pixels of ``image`` for an EXIF ``orientation`` (6 or 8).

    A viewer applying the orientation shows ``image`` again: orientation 6 means "rotate
    90 degrees clockwise to display", so the stored pixels are rotated the other way.
    """
    if orientation == 6:
        return image.transpose(Image.Transpose.ROTATE_90)
    if orientation == 8:
        return image.transpose(Image.Transpose.ROTATE_270)
    raise ValueError(f"orientation {orientation} not built here")


def _palette_with_transparency(width: int, height: int) -> Image.Image:
    indices = (np.arange(width * height).reshape(height, width) // 7 % 4).astype(np.uint8)
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 252)
    image.info["transparency"] = 0
    return image


def bmp_rle8(width: int = 4, height: int = 4) -> bytes:
    """A run-length encoded 8-bit BMP (Pillow decodes these in Python; it cannot write them)."""
    rows = b"".join(bytes([width, (y * 40) % 256]) + b"\x00\x00" for y in range(height))
    data = rows[:-2] + b"\x00\x01"  # last end-of-line becomes end-of-bitmap
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    return header + info + palette + data


def valid_images() -> dict[str, bytes]:
    """Named small valid images: every format and every mode the decoder must handle."""
    rgb = Image.fromarray(pattern(24, 16), "RGB")
    gray = rgb.convert("L")
    rgba = rgb.copy()
    alpha = (np.arange(24 * 16).reshape(16, 24) * 5 % 256).astype(np.uint8)
    rgba.putalpha(Image.fromarray(alpha, "L"))
    wide = np.asarray(gray).astype(np.uint16) * 257
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    images: dict[str, bytes] = {
        "png-L.png": encode(gray, "PNG"),
        "png-LA.png": encode(rgba.convert("LA"), "PNG"),
        "png-RGB.png": encode(rgb, "PNG"),
        "png-RGBA.png": encode(rgba, "PNG"),
        "png-P-transparent.png": encode(_palette_with_transparency(24, 16), "PNG"),
        "png-I16.png": encode(Image.fromarray(wide), "PNG"),
        "png-1.png": encode(gray.convert("1"), "PNG"),
        "png-exif6.png": encode(oriented(rgb, 6), "PNG", exif=exif_bytes(6)),
        "jpeg-L.jpg": encode(gray, "JPEG", quality=90),
        "jpeg-RGB.jpg": encode(rgb, "JPEG", quality=90),
        "jpeg-CMYK.jpg": encode(rgb.convert("CMYK"), "JPEG", quality=90),
        "jpeg-progressive.jpg": encode(rgb, "JPEG", quality=80, progressive=True),
        "jpeg-exif6.jpg": encode(oriented(rgb, 6), "JPEG", quality=90, exif=exif_bytes(6)),
        "jpeg-exif8.jpg": encode(oriented(rgb, 8), "JPEG", quality=90, exif=exif_bytes(8)),
        "webp-lossless-RGBA.webp": encode(rgba, "WEBP", lossless=True),
        "webp-lossy-RGB.webp": encode(rgb, "WEBP", quality=80),
        "webp-animated.webp": encode(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True
        ),
        "bmp-RGB.bmp": encode(rgb, "BMP"),
        "bmp-L.bmp": encode(gray, "BMP"),
        "bmp-rle8.bmp": bmp_rle8(),
    }
    return images


# -- declared sizes: header fields rewritten, checksums kept valid ---------------------------


def _png_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    out[16:20] = struct.pack(">I", width)
    out[20:24] = struct.pack(">I", height)
    out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def _jpeg_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = out.find(marker)
        if at >= 0:
            out[at + 5 : at + 7] = struct.pack(">H", height)
            out[at + 7 : at + 9] = struct.pack(">H", width)
            return bytes(out)
    raise ValueError("no SOF marker")


def _bmp_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    out[18:22] = struct.pack("<i", width)
    out[22:26] = struct.pack("<i", height)
    return bytes(out)


def _webp_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    chunk = bytes(out[12:16])
    if chunk == b"VP8X":
        out[24:27] = (width - 1).to_bytes(3, "little")
        out[27:30] = (height - 1).to_bytes(3, "little")
    elif chunk == b"VP8L":
        bits = int.from_bytes(out[21:25], "little")
        bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
        out[21:25] = bits.to_bytes(4, "little")
    elif chunk == b"VP8 ":
        out[26:28] = struct.pack("<H", width)
        out[28:30] = struct.pack("<H", height)
    else:
        raise ValueError("not a WebP")
    return bytes(out)


#: Largest size each format's header can declare.
MAX_DECLARABLE = {"PNG": 2**31 - 1, "JPEG": 65535, "BMP": 2**31 - 1, "WEBP": 16384}

_DECLARE: dict[str, Callable[[bytes, int, int], bytes]] = {
    "PNG": _png_size,
    "JPEG": _jpeg_size,
    "BMP": _bmp_size,
    "WEBP": _webp_size,
}


def declare_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """``data`` with its header rewritten to announce ``width`` x ``height`` pixels.

    The pixel data is left as it is (so it no longer matches): a decoder that trusts the
    header allocates for the announced size.
    """
    if fmt == "WEBP" and bytes(data[12:16]) == b"VP8 ":
        width, height = min(width, 16383), min(height, 16383)  # 14-bit fields in VP8
    return _DECLARE[fmt](data, width, height)


def declared_bomb(fmt: str, width: int, height: int) -> bytes:
    """A tiny file of ``fmt`` whose header announces ``width`` x ``height`` pixels."""
    small = Image.new("L", (8, 8), 128)
    base = {
        "PNG": encode(small, "PNG"),
        "JPEG": encode(small, "JPEG"),
        "BMP": encode(small, "BMP"),
        "WEBP": encode(
            small.convert("RGB"),
            "WEBP",
            save_all=True,
            append_images=[small.convert("RGB")],
            lossless=True,
        ),
    }[fmt]
    return declare_size(base, fmt, width, height)


def thin_png(width: int, height: int, mode: str = "L") -> bytes:
    """A valid, highly compressible PNG of a very thin (or very flat) image, built row by
    row so that making it costs no more memory than the compressed output."""
    channels = {"L": 1, "RGB": 3}[mode]
    colour_type = {"L": 0, "RGB": 2}[mode]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    compressor = zlib.compressobj(9)
    row = b"\x00" + bytes(range(channels)) * width  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

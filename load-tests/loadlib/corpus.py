"""The image corpus: photo-like JPEGs at real photo sizes, generated once and cached.

Real traffic is phone and camera photos, not 224x224 crops: decoding them is most of a
small model's cost, so a benchmark fed tiny images flatters every server. The generated
images mix the resolutions of web images, HD frames and 12-megapixel phone photos (both
orientations); their content is smooth shapes, gradients, texture and sensor-like noise,
so they compress like photos (0.2-0.4 bytes per pixel at quality 88).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Width x height of the generated images, cycled through in this order.
RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (640, 480),
    (4032, 3024),
    (1280, 720),
    (2048, 1536),
    (1024, 768),
    (3024, 4032),
    (1920, 1080),
    (1600, 1200),
)
#: Thumbnail sizes: decoding them is nearly free, so serving overhead is what remains.
THUMBNAILS: tuple[tuple[int, int], ...] = (
    (160, 120),
    (120, 160),
    (192, 144),
    (256, 192),
    (128, 128),
    (144, 192),
    (200, 150),
    (96, 96),
)
#: Named corpora: ``photos`` (real photo sizes) and ``thumbs`` (thumbnails); ``scenes`` (the
#: shapes demo detector's scenes, 160-640 px of mixed sizes) is drawn by its own generator.
KINDS: dict[str, tuple[tuple[int, int], ...]] = {"photos": RESOLUTIONS, "thumbs": THUMBNAILS}
SCENES = "scenes"
CACHE = Path(__file__).resolve().parent.parent / ".corpus"
ROOT = CACHE.parent.parent
#: Bump when the generator changes, so stale caches are not reused.
GENERATOR_VERSION = 1
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: blurred shapes over gradients, plus texture and noise."""
    rng = np.random.default_rng(seed)
    small_w, small_h = max(8, width // 8), max(8, height // 8)
    y, x = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    base = np.empty((small_h, small_w, 3), np.float32)
    for channel in range(3):
        fx, fy = rng.uniform(0.5, 3.0, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        base[..., channel] = 128 + 90 * np.sin(x / small_w * fx * np.pi + phase) * np.cos(
            y / small_h * fy * np.pi
        )
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(20, 40))):
        x0, y0 = int(rng.integers(0, small_w)), int(rng.integers(0, small_h))
        x1 = x0 + int(rng.integers(2, max(3, small_w // 4)))
        y1 = y0 + int(rng.integers(2, max(3, small_h // 4)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1 + 1, y1 + 1), fill=colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(radius=1.2))
    image = canvas.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    # Fine texture (foliage, fabric) in a band, and sensor noise everywhere.
    noise = rng.normal(0.0, 5.0, size=(height, width, 1)).astype(np.int16)
    band = slice(height // 3, height // 3 + max(1, height // 4))
    texture = rng.integers(-24, 25, size=(pixels[band].shape[0], width, 1), dtype=np.int16)
    pixels = pixels + noise
    pixels[band] += texture
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def ramp_png16(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG (a smooth ramp): quick to encode, large and slow to decode.

    What a client that wants a server's memory sends: 6300 x 6300 is ~300 MB decoded.
    """
    ramp = (np.arange(width, dtype=">u2") * (65535 // width)).tobytes()
    rows = zlib.compress(b"".join(b"\x00" + ramp for _ in range(height)), 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def jpeg_bytes(image: Image.Image, quality: int = 88) -> bytes:
    """Encode as a baseline JPEG with 4:2:0 chroma subsampling, like a camera."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=2)
    return buffer.getvalue()


def generate(
    count: int,
    seed: int = 0,
    resolutions: Sequence[tuple[int, int]] = RESOLUTIONS,
    cache: Path | None = CACHE,
) -> list[bytes]:
    """``count`` JPEGs cycling through ``resolutions``, cached under ``cache``.

    Args:
        count: number of images.
        seed: generator seed (same seed, same images).
        resolutions: sizes cycled through.
        cache: folder for the cache (``None``: no cache).

    Returns:
        Encoded JPEGs.
    """
    sizes = "-".join(f"{w}x{h}" for w, h in resolutions)
    folder = None
    if cache is not None:
        key = f"jpeg-v{GENERATOR_VERSION}-n{count}-s{seed}-{zlib.crc32(sizes.encode()):08x}"
        folder = cache / key
        files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
        if len(files) == count:
            return [f.read_bytes() for f in files]
    images = []
    for index in range(count):
        width, height = resolutions[index % len(resolutions)]
        images.append(jpeg_bytes(photo_like(width, height, seed * 100_003 + index)))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for index, data in enumerate(images):
            width, height = resolutions[index % len(resolutions)]
            (folder / f"{index:04d}-{width}x{height}.jpg").write_bytes(data)
    return images


def named(kind: str, count: int = 24, seed: int = 0) -> list[bytes]:
    """The ``photos``, ``thumbs`` (cached) or ``scenes`` corpus of ``count`` images."""
    if kind == SCENES:
        return shape_scenes(count, seed)
    if kind not in KINDS:
        raise ValueError(f"unknown corpus {kind!r}: use one of {', '.join([*KINDS, SCENES])}")
    return generate(count, seed, KINDS[kind])


def shape_scenes(count: int, seed: int = 0) -> list[bytes]:
    """Scenes of the shapes demo (``models/shapes/scenes.py``), 160-640 px, as JPEGs."""
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from models.shapes.scenes import scene

    rng = np.random.default_rng(1000 + seed)
    return [jpeg_bytes(scene(rng).image, quality=90) for _ in range(count)]


def load_dir(folder: Path) -> list[bytes]:
    """Every image file (by extension) under ``folder``, sorted by name.

    Raises:
        ValueError: no image found.
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(EXTENSIONS)}) under {folder}")
    return [p.read_bytes() for p in files]


def describe(images: Sequence[bytes]) -> str:
    """One line: count, resolutions and mean size of a corpus."""
    sizes: dict[str, int] = {}
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            key = f"{image.width}x{image.height}"
        sizes[key] = sizes.get(key, 0) + 1
    mean_kb = sum(len(d) for d in images) / max(1, len(images)) / 1024
    mix = ", ".join(f"{k} x{v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
    return f"{len(images)} images, mean {mean_kb:.0f} KiB ({mix})"

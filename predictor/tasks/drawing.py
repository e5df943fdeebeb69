"""Drawing primitives the tasks draw their results with (:mod:`predictor.tasks.annotate`)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

#: Distinct colours, one per class id (cycled).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
)


def colour(class_id: int) -> tuple[int, int, int]:
    """The colour of a class."""
    return PALETTE[class_id % len(PALETTE)]


def font(image: Image.Image) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font, sized to the image (about 1/40 of its shorter side)."""
    size = max(10, min(image.size) // 40)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def line_width(image: Image.Image) -> int:
    """A box outline width readable at the image's size."""
    return max(1, min(image.size) // 200)


def caption(
    pen: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    fill: tuple[int, int, int],
    typeface: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """``text`` in white on a ``fill`` band whose top-left corner is ``xy``."""
    left, top, right, bottom = pen.textbbox(xy, text, font=typeface)
    pen.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=fill)
    pen.text(xy, text, fill=(255, 255, 255), font=typeface)


def lines(image: Image.Image, texts: Sequence[str], fill: tuple[int, int, int] = (0, 0, 0)) -> None:
    """Lines of text in the top-left corner, one under the other."""
    pen = ImageDraw.Draw(image)
    typeface = font(image)
    y = 4.0
    for text in texts:
        caption(pen, (4.0, y), text, fill, typeface)
        _, top, _, bottom = pen.textbbox((4.0, y), text, font=typeface)
        y += bottom - top + 6

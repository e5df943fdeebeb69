"""``multipart/form-data`` uploads (``curl -F image=@cat.jpg``): file parts become images.

Every part with a file name is an image, whatever its field name. A part without one is a
request parameter (``-F top_k=3``; its text read as a JSON value when it is one, else as
text; ``parameters`` takes a whole JSON object), unless it is larger than
:data:`MAX_FIELD_BYTES` (``curl -F "image=<cat.jpg"`` sends a file without a name): then
it is an image too. The body is already bounded by ``--max-body-bytes`` when it arrives here,
and each image still goes through the pixel limit before it is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from predictor.errors import BadInput, TooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

#: A part without a file name and at most this long is a parameter, not an image.
MAX_FIELD_BYTES = 1024
#: Headers one part may carry, and their size (python-multipart enforces both).
MAX_PART_HEADERS = 8
MAX_PART_HEADER_BYTES = 4096


@dataclass
class Part:
    """One part of the form.

    Attributes:
        name: the form field name (``Content-Disposition: form-data; name=...``).
        filename: the file name the client gave, if any.
        data: the part's bytes.
    """

    name: str = ""
    filename: str | None = None
    data: bytes = b""

    @property
    def label(self) -> str:
        """How error messages name this part (never its content)."""
        shown = f"part {_short(self.name)!r}"
        return f"{shown} ({_short(self.filename)})" if self.filename else shown


@dataclass
class Upload:
    """A parsed upload: the images (with their labels) and the parameters of the form."""

    images: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


def _short(text: str) -> str:
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable[:60] + ("..." if len(printable) > 60 else "")


def parse(body: bytes, content_type: str, max_images: int) -> Upload:
    """Split a ``multipart/form-data`` body into images and parameters.

    Args:
        body: the whole request body.
        content_type: the request's ``Content-Type`` header (it carries the boundary).
        max_images: more image parts than this is a 413.

    Raises:
        BadInput: no boundary, malformed framing, no image part, a bad parameter field.
        TooLarge: more image parts than ``max_images``.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise BadInput("multipart/form-data needs a boundary in its Content-Type")
    parts = _split(body, boundary)
    upload = Upload()
    for part in parts:
        is_field = part.filename is None and len(part.data) <= MAX_FIELD_BYTES
        if is_field and part.name != "parameters":
            upload.parameters[part.name] = _field_value(part.data)
        elif is_field:
            try:
                document = orjson.loads(part.data)
            except orjson.JSONDecodeError:
                raise BadInput("the 'parameters' part is not valid JSON") from None
            if not isinstance(document, dict):
                raise BadInput("the 'parameters' part must be a JSON object")
            upload.parameters.update(document)
        else:
            upload.images.append(part.data)
            upload.labels.append(part.label)
    if not upload.images:
        raise BadInput("the form holds no image part (send files, e.g. curl -F image=@cat.jpg)")
    if len(upload.images) > max_images:
        raise TooLarge(f"the form holds {len(upload.images)} images; the limit is {max_images}")
    return upload


def _field_value(data: bytes) -> Any:
    """A form field's value: a JSON number, boolean or list when it is one, else its text."""
    text = data.decode("utf-8", "replace").strip()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | bool | list) else text


class _Collector:
    """python-multipart's callbacks, collecting the parts of one body."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self.ended = False
        self._chunks: list[bytes] = []
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._chunks.clear()
        self._headers.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._chunks.append(data[start:end])

    def on_part_end(self) -> None:
        part = Part(data=b"".join(self._chunks))
        disposition = self._headers.get(b"content-disposition")
        if disposition is not None:
            _, options = parse_options_header(disposition)
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            part.filename = None if filename is None else filename.decode("utf-8", "replace")
        self.parts.append(part)

    def on_end(self) -> None:
        self.ended = True


def _split(body: bytes, boundary: bytes) -> list[Part]:
    collector = _Collector()
    parser = MultipartParser(
        boundary,
        collector.callbacks(),
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_BYTES,
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise BadInput("malformed multipart/form-data body") from None
    if not collector.ended:
        raise BadInput("multipart/form-data body ends before its closing boundary")
    return collector.parts

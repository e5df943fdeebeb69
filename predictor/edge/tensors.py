"""v2 input tensors to images: BYTES elements (base64 or raw) and FP32 batches.

Every failure is a :class:`~predictor.errors.BadInput` (or ``TooLarge`` for too many
images) whose message names the input and never quotes the payload; raw BYTES framing is
never expanded beyond the shape it claims.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from predictor.errors import BadInput, TooLarge
from predictor.serving.request import ImagePayload
from predictor.tasks.base import MAX_INT

_WHITESPACE = str.maketrans("", "", " \t\r\n")


def shown(value: object) -> str:
    """A client-supplied name as it may appear in a message: quoted, one line, at most 32."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return repr(value[:32] + ("..." if len(value) > 32 else ""))


def tensor_shape(raw: object, name: str) -> list[int]:
    """The tensor shape as a list of ints in ``0..MAX_INT``; anything else is bad input."""
    if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Sequence | np.ndarray):
        raw = None
    dims = list(raw) if raw is not None else None
    if dims is None or len(dims) > 8 or not all(_is_dim(d) for d in dims):
        raise BadInput(f"input {name} needs a shape: a list of at most 8 non-negative integers")
    return [int(d) for d in dims]


def _is_dim(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return False
    return 0 <= int(value) <= MAX_INT


def check_count(count: int, max_images: int) -> None:
    """Refuse more images than ``max_images`` (413) before any is split out."""
    if count > max_images:
        raise TooLarge(f"request holds {count} images; the limit is {max_images}")


def bytes_images(tensor: Any, name: str, shape: list[int], max_images: int) -> list[ImagePayload]:
    """The images of a ``BYTES`` ``[N]`` (or ``[N, 1]``) input: base64 text or raw bytes."""
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadInput(f"BYTES input {name} must have shape [N] (or [N, 1]), got {shape}")
    check_count(shape[0], max_images)
    try:
        if tensor._raw_data is not None:
            values: list[Any] = _split_raw_bytes(tensor._raw_data, shape[0])
        else:
            values = _flat(tensor.data)
    except (TypeError, ValueError):
        raise BadInput(f"BYTES input {name} is malformed") from None
    if len(values) != shape[0]:
        raise BadInput(f"BYTES input {name} has {len(values)} elements but shape says {shape[0]}")
    images: list[ImagePayload] = []
    for index, value in enumerate(values):
        where = f"input {name} element {index}"
        if isinstance(value, bytes | bytearray):
            images.append(bytes(value))
        elif isinstance(value, str):
            images.append(b64_image(value, where))
        else:
            raise BadInput(f"{where} must be base64 text or raw bytes")
    return images


def _split_raw_bytes(raw: object, expected: int) -> list[Any]:
    """Split a raw BYTES tensor (4-byte little-endian length, then the bytes, repeated).

    Stops after one element more than ``expected``, so a framing of millions of empty
    elements never turns into millions of objects.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw contents must be bytes")
    view = memoryview(raw).cast("B")
    values: list[Any] = []
    offset = 0
    while offset < len(view) and len(values) <= expected:
        if offset + 4 > len(view):
            raise ValueError("truncated element length")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            raise ValueError("element longer than the tensor")
        values.append(bytes(view[offset : offset + length]))
        offset += length
    return values


def fp32_images(tensor: Any, name: str, shape: list[int], max_images: int) -> list[ImagePayload]:
    """The ``(C, H, W)`` tensors of an ``FP32`` ``[N, C, H, W]`` input (JSON or raw)."""
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or min(shape) < 1:
        raise BadInput(f"FP32 input {name} must have shape [N, C, H, W], got {shape}")
    check_count(shape[0], max_images)
    count = math.prod(shape)
    try:
        if tensor._raw_data is not None:
            raw = tensor._raw_data
            if not isinstance(raw, bytes | bytearray | memoryview):
                raise TypeError("raw contents must be bytes")
            array = np.frombuffer(raw, dtype="<f4")
        else:
            values = _flat(tensor.data)
            if len(values) != count:
                raise ValueError("element count does not match the shape")
            array = np.asarray(values, dtype=np.float32)
        array = array.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInput(
            f"FP32 input {name} does not hold {count} numbers for shape {shape} "
            f"({type(exc).__name__})"
        ) from None
    return list(array)


def _flat(data: Any) -> list[Any]:
    """Flatten nested JSON lists in row-major order, iteratively (no recursion limit)."""
    if not isinstance(data, list):
        raise TypeError("data must be a list")
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) >= 8:
                    raise ValueError("data is nested too deeply")
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def b64_image(text: str, where: str) -> bytes:
    """Base64 text (standard or URL-safe alphabet, line breaks allowed) to bytes."""
    cleaned = text.translate(_WHITESPACE)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned)
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where} is not valid base64") from None

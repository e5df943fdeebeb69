"""gRPC request parameters as plain values, Triton's numeric kinds included.

KServe's ``InferParameter`` has ``bool_param``, ``int64_param`` and ``string_param``;
Triton's adds ``double_param`` (field 4) and ``uint64_param`` (field 5), and tritonclient
sends a Python float as ``double_param`` (``parameters={"score_threshold": 0.3}``). Parsed
with KServe's message, those arrive as unknown fields with no value set, and KServe's own
conversion drops them silently: a request would run with the default threshold. Here they
are read from the wire form instead.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from predictor.errors import BadInput

_DOUBLE = 0x21  # field 4, wire type 1 (64-bit)
_UINT64 = 0x28  # field 5, wire type 0 (varint)


def request_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: value}`` of a ``ModelInferRequest``'s parameters map.

    Raises:
        BadInput: a parameter holds no value this server can read.
    """
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(parameter, kind)
            continue
        value = _triton_numeric(parameter.SerializeToString())
        if value is None:
            shown = "".join(c if c.isprintable() else "?" for c in str(key))[:40]
            raise BadInput(f"parameter {shown!r} holds no value (bool, int64, string, double)")
        values[key] = value
    return values


def _triton_numeric(raw: bytes) -> float | int | None:
    """The ``double_param`` or ``uint64_param`` of a serialized ``InferParameter``."""
    if len(raw) == 9 and raw[0] == _DOUBLE:
        number: float = struct.unpack("<d", raw[1:])[0]
        return number
    if 2 <= len(raw) <= 11 and raw[0] == _UINT64:
        value, shift = 0, 0
        for index, byte in enumerate(raw[1:]):
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value if index == len(raw) - 2 else None
        return None
    return None

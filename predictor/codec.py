"""KServe v1 / v2 / raw-body payloads to image payloads, and results back. No torch here.

Accepted inputs (all land in one :class:`ImageRequest`):

* v1 raw body: ``POST /v1/models/<m>:predict`` with ``Content-Type: image/*``; KServe hands
  the body to the model as ``bytes``.
* v1 JSON: ``{"instances": [{"image_bytes": {"b64": "..."}}, ...], "parameters": {...}}``;
  an instance may also be ``{"b64": "..."}`` or a bare base64 string.
* v2 (REST or gRPC): one input, either ``BYTES`` of shape ``[N]`` (base64 strings over REST
  JSON, raw bytes over gRPC) or a preprocessed ``FP32`` tensor ``[N, C, H, W]``.

Per-request parameters: ``top_k`` and ``timeout_ms`` (v1 ``parameters``, v2/gRPC request
``parameters``); the ``x-request-timeout-ms`` header works on every route.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from predictor.errors import BadInput
from predictor.postprocess import TopK

#: An image as it travels to preprocessing: encoded bytes, or an FP32 ``(C, H, W)`` tensor.
ImagePayload = bytes | np.ndarray

TIMEOUT_HEADER = "x-request-timeout-ms"
_WHITESPACE = str.maketrans("", "", " \t\r\n")
OUTPUTS = ("labels", "scores", "class_ids")


@dataclass
class ImageRequest:
    """One inference request, protocol-neutral.

    Attributes:
        protocol: ``v1``, ``v2`` or ``grpc`` (the ``protocol`` metric label).
        images: the images, in request order.
        top_k: per-request override of the model's default k, if given.
        timeout_ms: per-request deadline, if given (capped by the server's later).
        request_id: the v2 request id, echoed in the response.
        binary_outputs: answer with raw binary outputs (gRPC raw inputs, REST binary ext.).
        requested_outputs: v2 outputs asked for by name; None means all.
    """

    protocol: str
    images: list[ImagePayload]
    top_k: int | None = None
    timeout_ms: int | None = None
    request_id: str | None = None
    binary_outputs: bool = False
    requested_outputs: Any = None


def protocol_of(payload: object) -> str:
    """The metric label of a payload's protocol: ``v1``, ``v2`` or ``grpc``."""
    if isinstance(payload, InferRequest):
        return "grpc" if payload.from_grpc else "v2"
    return "v1"


def decode_request(payload: object, headers: Mapping[str, str] | None = None) -> ImageRequest:
    """Turn whatever KServe handed to ``preprocess`` into an :class:`ImageRequest`.

    Args:
        payload: ``bytes`` (v1 raw body), ``dict`` (v1 JSON) or ``InferRequest`` (v2, gRPC).
        headers: request headers (gRPC metadata for gRPC), lower-case keys.

    Returns:
        The decoded request.

    Raises:
        BadInput: the payload is malformed; the message names the problem.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        request = ImageRequest("v1", [bytes(payload)])
    elif isinstance(payload, dict):
        request = _decode_v1(payload)
    elif isinstance(payload, InferRequest):
        request = _decode_v2(payload)
    else:
        raise BadInput(f"unsupported request body ({type(payload).__name__})")
    if not request.images:
        raise BadInput("request holds no images")
    header_timeout = (headers or {}).get(TIMEOUT_HEADER)
    if header_timeout is not None:
        timeout = _positive_int(header_timeout, TIMEOUT_HEADER)
        request.timeout_ms = (
            timeout if request.timeout_ms is None else min(timeout, request.timeout_ms)
        )
    return request


def _decode_v1(body: dict[str, Any]) -> ImageRequest:
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise BadInput('v1 JSON needs "instances": a list of {"image_bytes": {"b64": ...}}')
    images: list[ImagePayload] = []
    for index, instance in enumerate(instances):
        item = instance
        if isinstance(item, dict) and "image_bytes" in item:
            item = item["image_bytes"]
        if isinstance(item, dict) and "b64" in item:
            item = item["b64"]
        if not isinstance(item, str):
            raise BadInput(f'instances[{index}] must be {{"image_bytes": {{"b64": "<base64>"}}}}')
        images.append(_b64(item, f"instances[{index}]"))
    request = ImageRequest("v1", images)
    _apply_parameters(request, body.get("parameters"))
    return request


def _decode_v2(infer: InferRequest) -> ImageRequest:
    protocol = protocol_of(infer)
    if len(infer.inputs) != 1:
        raise BadInput(
            f"expected exactly one input (BYTES 'image' or FP32 'tensor'), got {len(infer.inputs)}"
        )
    tensor = infer.inputs[0]
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype == "BYTES":
        images = _v2_bytes(tensor, name, shape)
    elif datatype == "FP32":
        images = _v2_fp32(tensor, name, shape)
    else:
        raise BadInput(
            f"input {name!r} has datatype {datatype}; use BYTES (images) or FP32 (tensor)"
        )
    request = ImageRequest(
        protocol,
        images,
        request_id=infer.id or None,
        binary_outputs=bool(infer.use_binary_outputs),
        requested_outputs=infer.request_outputs,
    )
    params = infer.parameters
    if params is not None and not isinstance(params, dict):
        params = to_http_parameters(params)
    _apply_parameters(request, params)
    return request


def _v2_bytes(tensor: Any, name: str, shape: list[int]) -> list[ImagePayload]:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadInput(f"BYTES input {name!r} must have shape [N] (or [N, 1]), got {shape}")
    try:
        if tensor._raw_data is not None:
            values = tensor.as_numpy().reshape(-1).tolist()
        else:
            values = _flat(tensor.data)
    except Exception as exc:  # untrusted framing (struct, reshape, types): all bad input
        raise BadInput(f"BYTES input {name!r} is malformed ({type(exc).__name__})") from None
    if len(values) != shape[0]:
        raise BadInput(f"BYTES input {name!r} has {len(values)} elements but shape says {shape[0]}")
    images: list[ImagePayload] = []
    for index, value in enumerate(values):
        where = f"input {name!r} element {index}"
        if isinstance(value, bytes | bytearray):
            images.append(bytes(value))
        elif isinstance(value, str):
            images.append(_b64(value, where))
        else:
            raise BadInput(f"{where} must be base64 text or raw bytes")
    return images


def _v2_fp32(tensor: Any, name: str, shape: list[int]) -> list[ImagePayload]:
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or min(shape) < 1:
        raise BadInput(f"FP32 input {name!r} must have shape [N, C, H, W], got {shape}")
    try:
        if tensor._raw_data is not None:
            array = np.frombuffer(tensor._raw_data, dtype="<f4")
        else:
            array = np.asarray(_flat(tensor.data), dtype=np.float32)
        array = array.reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadInput(
            f"FP32 input {name!r} does not hold {math.prod(shape)} numbers for shape {shape} "
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


def _b64(text: str, where: str) -> bytes:
    cleaned = text.translate(_WHITESPACE)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned)
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where} is not valid base64") from None


def _apply_parameters(request: ImageRequest, params: Any) -> None:
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise BadInput('"parameters" must be an object')
    if "top_k" in params:
        request.top_k = _positive_int(params["top_k"], "parameters.top_k")
    if "timeout_ms" in params:
        request.timeout_ms = _positive_int(params["timeout_ms"], "parameters.timeout_ms")


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise BadInput(f"{where} must be a positive integer")
    try:
        number = int(value) if isinstance(value, int | str) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise BadInput(f"{where} must be a positive integer, got {str(value)[:40]!r}")
    return number


def encode_v1(results: Sequence[TopK]) -> dict[str, Any]:
    """The v1 answer: ``{"predictions": [[{"label", "score", "class_id"}, ...k], ...N]}``."""
    return {
        "predictions": [
            [
                {"label": label, "score": float(score), "class_id": int(class_id)}
                for label, score, class_id in zip(
                    r.labels, r.scores.tolist(), r.class_ids.tolist(), strict=True
                )
            ]
            for r in results
        ]
    }


def encode_v2(request: ImageRequest, model_name: str, results: Sequence[TopK]) -> InferResponse:
    """The v2 answer: ``labels`` (BYTES), ``scores`` (FP32), ``class_ids`` (INT64), [N, k]."""
    k = min(len(r.labels) for r in results)
    labels = np.array([[s.encode() for s in r.labels[:k]] for r in results], dtype=np.object_)
    scores = np.stack([r.scores[:k] for r in results]).astype(np.float32)
    class_ids = np.stack([r.class_ids[:k] for r in results]).astype(np.int64)
    outputs = []
    for name, datatype, array in (
        ("labels", "BYTES", labels),
        ("scores", "FP32", scores),
        ("class_ids", "INT64", class_ids),
    ):
        output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
        output.set_data_from_numpy(array, binary_data=request.binary_outputs)
        outputs.append(output)
    return InferResponse(
        response_id=request.request_id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=outputs,
        from_grpc=request.protocol == "grpc",
        use_binary_outputs=request.binary_outputs,
        requested_outputs=request.requested_outputs,
    )

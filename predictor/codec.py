"""KServe v1 / v2 / raw-body payloads to image payloads, and results back. No torch here.

Accepted inputs (all land in one :class:`ImageRequest`):

* v1 raw body: ``POST /v1/models/<m>:predict`` with ``Content-Type: image/*`` (or a
  multipart upload, one image per file part): the HTTP edge hands the bytes over.
* v1 JSON: ``{"instances": [{"image_bytes": {"b64": "..."}}, ...], "parameters": {...}}``;
  an instance may also be ``{"b64": "..."}`` or a bare base64 string.
* v2 (REST or gRPC): one input, either ``BYTES`` of shape ``[N]`` (base64 strings over REST
  JSON, raw bytes over the REST binary extension and gRPC) or a preprocessed ``FP32`` tensor
  ``[N, C, H, W]``.

Per-request parameters: ``top_k`` and ``timeout_ms`` (v1 ``parameters``, v2/gRPC request
``parameters``); the ``x-request-timeout-ms`` header works on every route.
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from predictor.errors import BadInput, TooLarge
from predictor.postprocess import TopK

#: An image as it travels to preprocessing: encoded bytes, or an FP32 ``(C, H, W)`` tensor.
ImagePayload = bytes | np.ndarray

TIMEOUT_HEADER = "x-request-timeout-ms"
_WHITESPACE = str.maketrans("", "", " \t\r\n")
OUTPUTS = ("labels", "scores", "class_ids")
#: Largest accepted integer parameter (``top_k``, ``timeout_ms``) and tensor dimension.
MAX_INT = 2**31 - 1
#: Images one request may hold, checked before any per-image object is built (the model's
#: queue capacity is the tighter, later check).
MAX_IMAGES = 65536


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
        requested_outputs: v2 outputs asked for by name, with their ``binary_data`` choice
            (None: not said); None means all, in the model's order.
        labels: how error messages name each image (multipart parts); None: by index.
    """

    protocol: str
    images: list[ImagePayload]
    top_k: int | None = None
    timeout_ms: int | None = None
    request_id: str | None = None
    binary_outputs: bool = False
    requested_outputs: dict[str, bool | None] | None = None
    labels: list[str] | None = None

    def label(self, index: int) -> str | None:
        """How an error about image ``index`` names it (None: a lone image needs no name)."""
        if self.labels is not None:
            return self.labels[index]
        return f"image {index}" if len(self.images) > 1 else None


@dataclass
class Tensor:
    """One output tensor of a v2 answer, protocol-neutral.

    Attributes:
        name: output name.
        datatype: v2 datatype (``BYTES``, ``FP32``, ``INT64``...).
        array: the values; ``BYTES`` as an object array of ``bytes``.
        binary: send as raw binary data (REST binary extension / gRPC raw contents).
    """

    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


@dataclass
class V2Answer:
    """A v2 inference answer before it is put on a wire (REST JSON, REST binary or gRPC)."""

    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor] = field(default_factory=list)


def protocol_of(payload: object) -> str:
    """The metric label of a payload's protocol: ``v1``, ``v2`` or ``grpc``."""
    if isinstance(payload, InferRequest):
        return "grpc" if payload.from_grpc else "v2"
    return "v1"


def decode_request(
    payload: object, headers: Mapping[str, str] | None = None, max_images: int = MAX_IMAGES
) -> ImageRequest:
    """Turn whatever KServe handed to ``preprocess`` into an :class:`ImageRequest`.

    Args:
        payload: ``bytes`` (v1 raw body), ``dict`` (v1 JSON), ``InferRequest`` (v2, gRPC), or
            an :class:`ImageRequest` the HTTP edge decoded already (returned as it is).
        headers: request headers (gRPC metadata for gRPC), lower-case keys.
        max_images: requests holding more images are refused before they are split up.

    Returns:
        The decoded request.

    Raises:
        BadInput: the payload is malformed; the message names the problem (it never quotes
            the payload).
        TooLarge: the request holds more than ``max_images`` images.
    """
    if isinstance(payload, ImageRequest):
        return payload
    if isinstance(payload, bytes | bytearray | memoryview):
        request = ImageRequest("v1", [bytes(payload)])
    elif isinstance(payload, dict):
        request = _decode_v1(payload, max_images)
    elif isinstance(payload, InferRequest):
        request = _decode_v2(payload, max_images)
    else:
        raise BadInput(f"unsupported request body ({type(payload).__name__})")
    return complete(request, None, headers)


def complete(
    request: ImageRequest, parameters: Any, headers: Mapping[str, str] | None
) -> ImageRequest:
    """Apply a request's ``parameters`` and its ``x-request-timeout-ms`` header.

    Raises:
        BadInput: no images, or a parameter or the header is invalid.
    """
    if not request.images:
        raise BadInput("request holds no images")
    _apply_parameters(request, parameters)
    header_timeout = (headers or {}).get(TIMEOUT_HEADER)
    if header_timeout is not None:
        timeout = _positive_int(header_timeout, TIMEOUT_HEADER)
        request.timeout_ms = (
            timeout if request.timeout_ms is None else min(timeout, request.timeout_ms)
        )
    return request


def _decode_v1(body: dict[str, Any], max_images: int) -> ImageRequest:
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise BadInput('v1 JSON needs "instances": a list of {"image_bytes": {"b64": ...}}')
    _check_count(len(instances), max_images)
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


def _decode_v2(infer: InferRequest, max_images: int) -> ImageRequest:
    protocol = protocol_of(infer)
    params = infer.parameters
    if params is not None and not isinstance(params, Mapping):
        raise BadInput('"parameters" must be an object')
    if params is not None and not isinstance(params, dict):
        params = to_http_parameters(params)
    if len(infer.inputs) != 1:
        raise BadInput(
            f"expected exactly one input (BYTES 'image' or FP32 'tensor'), got {len(infer.inputs)}"
        )
    tensor = infer.inputs[0]
    name = _shown(tensor.name)
    datatype = tensor.datatype
    if not (isinstance(datatype, str) and datatype.isalnum() and len(datatype) <= 16):
        datatype = _shown(datatype)
    shape = _shape(tensor.shape, name)
    if tensor.datatype == "BYTES":
        images = _v2_bytes(tensor, name, shape, max_images)
    elif tensor.datatype == "FP32":
        images = _v2_fp32(tensor, name, shape, max_images)
    else:
        raise BadInput(f"input {name} has datatype {datatype}; use BYTES (images) or FP32 (tensor)")
    request_id = infer.id
    if request_id is not None and not isinstance(request_id, str):
        raise BadInput('"id" must be a string')
    request = ImageRequest(
        protocol,
        images,
        request_id=request_id or None,
        binary_outputs=_binary_outputs(infer, params),
        requested_outputs=_requested_outputs(infer.request_outputs),
    )
    _apply_parameters(request, params)
    return request


def _binary_outputs(infer: InferRequest, params: Any) -> bool:
    """Raw binary outputs: gRPC requests that sent raw inputs, REST ``binary_data_output``."""
    if infer.from_grpc:
        return bool(infer.use_binary_outputs)
    flag = params.get("binary_data_output", False) if params else False
    if not isinstance(flag, bool):
        raise BadInput("parameters.binary_data_output must be true or false")
    return flag


def _requested_outputs(requested: Any) -> dict[str, bool | None] | None:
    """Requested outputs by name with their ``binary_data`` flag; unknown names are 400."""
    if not requested:
        return None
    if not isinstance(requested, Sequence) or len(requested) > len(OUTPUTS):
        raise BadInput(f'"outputs" must list at most {len(OUTPUTS)} of {", ".join(OUTPUTS)}')
    out: dict[str, bool | None] = {}
    for item in requested:
        name = getattr(item, "name", None)
        if name not in OUTPUTS:
            raise BadInput(
                f"unknown output {_shown(name)}; this model answers {', '.join(OUTPUTS)}"
            )
        params = getattr(item, "parameters", None) or {}
        binary = params.get("binary_data") if isinstance(params, Mapping) else None
        if binary is not None and not isinstance(binary, bool):
            raise BadInput(f"outputs {name}: binary_data must be true or false")
        out[str(name)] = binary
    return out


def _shown(value: object) -> str:
    """A client-supplied name as it may appear in a message: quoted, one line, at most 32."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return repr(value[:32] + ("..." if len(value) > 32 else ""))


def _shape(raw: object, name: str) -> list[int]:
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


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise TooLarge(f"request holds {count} images; the limit is {max_images}")


def _v2_bytes(tensor: Any, name: str, shape: list[int], max_images: int) -> list[ImagePayload]:
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise BadInput(f"BYTES input {name} must have shape [N] (or [N, 1]), got {shape}")
    _check_count(shape[0], max_images)
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
            images.append(_b64(value, where))
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


def _v2_fp32(tensor: Any, name: str, shape: list[int], max_images: int) -> list[ImagePayload]:
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or min(shape) < 1:
        raise BadInput(f"FP32 input {name} must have shape [N, C, H, W], got {shape}")
    _check_count(shape[0], max_images)
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
    """An integer in ``1..MAX_INT`` from an int or decimal text; the value is never quoted."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and len(value) <= 32:
        text = value.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
    if number is None or not 1 <= number <= MAX_INT:
        raise BadInput(f"{where} must be an integer from 1 to {MAX_INT}")
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


def encode_v2(
    request: ImageRequest, model_name: str, model_version: str, results: Sequence[TopK]
) -> V2Answer:
    """The v2 answer: ``labels`` (BYTES), ``scores`` (FP32), ``class_ids`` (INT64), [N, k].

    Only the outputs the request asked for, in the order it asked for them.
    """
    k = min(len(r.labels) for r in results)
    arrays = {
        "labels": np.array([[s.encode() for s in r.labels[:k]] for r in results], dtype=np.object_),
        "scores": np.stack([r.scores[:k] for r in results]).astype(np.float32),
        "class_ids": np.stack([r.class_ids[:k] for r in results]).astype(np.int64),
    }
    datatypes = {"labels": "BYTES", "scores": "FP32", "class_ids": "INT64"}
    wanted = request.requested_outputs or dict.fromkeys(OUTPUTS)
    outputs = [
        Tensor(name, datatypes[name], arrays[name], request.binary_outputs if b is None else b)
        for name, b in wanted.items()
    ]
    return V2Answer(model_name, model_version, request.request_id or str(uuid.uuid4()), outputs)


def to_infer_response(answer: V2Answer, request: ImageRequest) -> InferResponse:
    """The answer as KServe's ``InferResponse``, which its gRPC servicer puts on the wire."""
    outputs = []
    for tensor in answer.outputs:
        output = InferOutput(
            name=tensor.name, shape=list(tensor.array.shape), datatype=tensor.datatype
        )
        output.set_data_from_numpy(tensor.array, binary_data=request.binary_outputs)
        outputs.append(output)
    return InferResponse(
        response_id=answer.id,
        model_name=answer.model_name,
        model_version=answer.model_version,
        infer_outputs=outputs,
        from_grpc=True,
        use_binary_outputs=request.binary_outputs,
    )

"""KServe v1 / v2 / raw-body payloads to one :class:`ImageRequest`. No torch here.

Accepted inputs (all land in one :class:`ImageRequest`):

* v1 raw body: ``POST /v1/models/<m>:predict`` with ``Content-Type: image/*`` (or a
  multipart upload, one image per file part): the HTTP edge hands the bytes over.
* v1 JSON: ``{"instances": [{"image_bytes": {"b64": "..."}}, ...], "parameters": {...}}``;
  an instance may also be ``{"b64": "..."}`` or a bare base64 string.
* v2 (REST or gRPC): one input, either ``BYTES`` of shape ``[N]`` (base64 strings over REST
  JSON, raw bytes over the REST binary extension and gRPC) or a preprocessed ``FP32`` tensor
  ``[N, C, H, W]``.

Per-request parameters (v1 ``parameters``, v2/gRPC request ``parameters``) are carried as
sent for the model's task to check; ``timeout_ms`` is the edge's own, and the
``x-request-timeout-ms`` header works on every route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from kserve.protocol.infer_type import InferRequest, to_http_parameters

from predictor.edge.tensors import (
    b64_image,
    bytes_images,
    check_count,
    fp32_images,
    shown,
    tensor_shape,
)
from predictor.errors import BadInput
from predictor.serving.request import ImagePayload, ImageRequest
from predictor.tasks.base import positive_int

TIMEOUT_HEADER = "x-request-timeout-ms"
#: Images one request may hold, checked before any per-image object is built (the model's
#: queue capacity is the tighter, later check).
MAX_IMAGES = 65536
#: Parameters one request may carry.
MAX_PARAMETERS = 64


def protocol_of(payload: object) -> str:
    """The metric label of a payload's protocol: ``v1``, ``v2`` or ``grpc``."""
    if isinstance(payload, InferRequest):
        return "grpc" if payload.from_grpc else "v2"
    return "v1"


def decode_request(
    payload: object,
    headers: Mapping[str, str] | None = None,
    max_images: int = MAX_IMAGES,
    outputs: Sequence[str] = (),
) -> ImageRequest:
    """Turn a decoded body into an :class:`ImageRequest`.

    Args:
        payload: ``bytes`` (v1 raw body), ``dict`` (v1 JSON) or ``InferRequest`` (v2, gRPC).
        headers: request headers (gRPC metadata for gRPC), lower-case keys.
        max_images: requests holding more images are refused before they are split up.
        outputs: the model's v2 outputs (a v2 request may only ask for these).

    Returns:
        The decoded request.

    Raises:
        BadInput: the payload is malformed; the message names the problem (it never quotes
            the payload).
        TooLarge: the request holds more than ``max_images`` images.
    """
    if isinstance(payload, bytes | bytearray | memoryview):
        request = ImageRequest("v1", [bytes(payload)])
    elif isinstance(payload, dict):
        request = _decode_v1(payload, max_images)
    elif isinstance(payload, InferRequest):
        request = _decode_v2(payload, max_images, outputs)
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
        timeout = positive_int(header_timeout, TIMEOUT_HEADER)
        request.timeout_ms = (
            timeout if request.timeout_ms is None else min(timeout, request.timeout_ms)
        )
    return request


def query_parameters(query: str) -> dict[str, str]:
    """Per-request parameters from a URL's query string (``?score_threshold=0.3&top_k=2``).

    For bodies that carry none of their own (a raw image, a multipart upload).

    Raises:
        BadInput: more than :data:`MAX_PARAMETERS` of them, or a name given twice.
    """
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_PARAMETERS)
    except ValueError:
        raise BadInput(f"the query string holds more than {MAX_PARAMETERS} parameters") from None
    found = dict(pairs)
    if len(found) != len(pairs):
        raise BadInput("a query parameter is given twice")
    return found


def _decode_v1(body: dict[str, Any], max_images: int) -> ImageRequest:
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise BadInput('v1 JSON needs "instances": a list of {"image_bytes": {"b64": ...}}')
    check_count(len(instances), max_images)
    images: list[ImagePayload] = []
    for index, instance in enumerate(instances):
        item = instance
        if isinstance(item, dict) and "image_bytes" in item:
            item = item["image_bytes"]
        if isinstance(item, dict) and "b64" in item:
            item = item["b64"]
        if not isinstance(item, str):
            raise BadInput(f'instances[{index}] must be {{"image_bytes": {{"b64": "<base64>"}}}}')
        images.append(b64_image(item, f"instances[{index}]"))
    request = ImageRequest("v1", images)
    _apply_parameters(request, body.get("parameters"))
    return request


def _decode_v2(infer: InferRequest, max_images: int, outputs: Sequence[str]) -> ImageRequest:
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
    name = shown(tensor.name)
    datatype = tensor.datatype
    if not (isinstance(datatype, str) and datatype.isalnum() and len(datatype) <= 16):
        datatype = shown(datatype)
    shape = tensor_shape(tensor.shape, name)
    if tensor.datatype == "BYTES":
        images = bytes_images(tensor, name, shape, max_images)
    elif tensor.datatype == "FP32":
        images = fp32_images(tensor, name, shape, max_images)
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
        requested_outputs=_requested_outputs(infer.request_outputs, outputs),
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


def _requested_outputs(requested: Any, outputs: Sequence[str]) -> dict[str, bool | None] | None:
    """Requested outputs by name with their ``binary_data`` flag; unknown names are 400."""
    if not requested:
        return None
    if not isinstance(requested, Sequence) or len(requested) > len(outputs):
        raise BadInput(f'"outputs" must list at most {len(outputs)} of {", ".join(outputs)}')
    out: dict[str, bool | None] = {}
    for item in requested:
        name = getattr(item, "name", None)
        if name not in outputs:
            raise BadInput(f"unknown output {shown(name)}; this model answers {', '.join(outputs)}")
        params = getattr(item, "parameters", None) or {}
        binary = params.get("binary_data") if isinstance(params, Mapping) else None
        if binary is not None and not isinstance(binary, bool):
            raise BadInput(f"outputs {name}: binary_data must be true or false")
        out[str(name)] = binary
    return out


def _apply_parameters(request: ImageRequest, params: Any) -> None:
    """Keep a request's parameters for its task; ``timeout_ms`` is the edge's own."""
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise BadInput('"parameters" must be an object')
    if len(params) > MAX_PARAMETERS:
        raise BadInput(f'"parameters" holds more than {MAX_PARAMETERS} entries')
    for key, value in params.items():
        if key == "timeout_ms":
            request.timeout_ms = positive_int(value, "parameters.timeout_ms")
        elif isinstance(key, str):
            request.parameters[key] = value

"""The two inference routes, answered by KServe's data plane without FastAPI's routing.

``POST /v1/models/<m>:predict`` and ``POST /v2/models/<m>/infer`` do exactly what KServe's
``V1Endpoints.predict`` and ``V2Endpoints.infer`` do (readiness check, ``DataPlane.decode``,
``DataPlane.infer``, ``DataPlane.encode``, the same response bodies), called directly from
the HTTP edge. Measured on the demo model, FastAPI's routing, dependency solving and
middleware stack cost about a third of the event loop's time per request; every other
route still goes through FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse
from pydantic import ValidationError

from predictor.errors import BadInput

Headers = list[tuple[bytes, bytes]]
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, headers and body."""

    status: int
    headers: Headers
    body: bytes


def _headers(extra: Mapping[str, str], content_type: bool) -> Headers:
    out = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in extra.items()]
    if content_type and not any(k == b"content-type" for k, _ in out):
        out.append(_JSON)
    return out


async def v1_predict(
    dataplane: DataPlane, model_name: str, body: bytes, headers: dict[str, str]
) -> Answer:
    """KServe v1 ``:predict`` (raw image bodies and JSON ``instances``)."""
    if not await dataplane.model_ready(model_name, True):
        raise ModelNotReady(model_name)
    request, attributes = dataplane.decode(body=body, headers=headers)
    response, response_headers = await dataplane.infer(
        model_name=model_name, request=request, headers=headers
    )
    response, encoded_headers = dataplane.encode(
        model_name=model_name, response=response, headers=headers, req_attributes=attributes
    )
    response_headers.update(encoded_headers)
    response_headers.pop("content-length", None)
    if isinstance(response, bytes | str):
        raw = response.encode() if isinstance(response, str) else response
        return Answer(200, _headers(response_headers, content_type=False), raw)
    payload = orjson.dumps(response, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return Answer(200, _headers(response_headers, content_type=True), payload)


async def v2_infer(
    dataplane: DataPlane, model_name: str, body: bytes, headers: dict[str, str]
) -> Answer:
    """KServe v2 ``/infer`` (JSON, or the binary tensor extension)."""
    if not await dataplane.model_ready(model_name, True):
        raise ModelNotReady(model_name)
    binary = INFERENCE_CONTENT_LENGTH_HEADER in headers
    request_body: InferenceRequest | bytes = body if binary else _parse_v2_json(body)
    request, _ = dataplane.decode(
        request_body, headers, protocol_version="v2", model_name=model_name
    )
    response, response_headers = await dataplane.infer(
        model_name=model_name, request=request, headers=headers
    )
    response, encoded_headers = dataplane.encode(
        model_name=model_name, response=response, headers=headers, req_attributes={}
    )
    response_headers.update(encoded_headers)
    response_headers.pop("content-length", None)
    response_headers.pop("content-type", None)
    if isinstance(response, bytes):
        return Answer(200, _headers(response_headers, content_type=False), response)
    payload = InferenceResponse.model_validate(response).model_dump_json().encode()
    return Answer(200, _headers(response_headers, content_type=True), payload)


def _parse_v2_json(body: bytes) -> InferenceRequest:
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadInput("malformed request: body is not valid JSON") from None
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
        detail = errors[0]["msg"] if errors else "invalid"
        raise BadInput(f"malformed request: {where} {detail}"[:300]) from None

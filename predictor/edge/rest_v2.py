"""The v2 REST wire format: JSON bodies and the binary tensor extension, both ways.

Requests become KServe's ``InferRequest`` (the type its gRPC servicer builds too), so one
decoder (:func:`predictor.edge.protocols.decode_request`) turns every v2 request into images.
Answers leave as JSON, or, when the request asked for binary outputs, in the binary tensor
extension Triton defined and its clients speak (``tritonclient.http`` with
``binary_data=True``, KServe's ``InferenceRESTClient``):

* the body is a JSON header followed by raw tensor bytes; the ``Inference-Header-Content-
  Length`` header gives the JSON header's length;
* a tensor sent raw has ``"parameters": {"binary_data_size": n}`` instead of ``"data"``,
  and its bytes follow in the order the tensors are listed;
* ``BYTES`` elements are raw bytes, each preceded by its length as 4 little-endian bytes;
  numeric tensors are little-endian, row-major.

Fields without a value are left out of answers (never ``null``), as the Open Inference
Protocol's schema requires. Parsing never quotes the payload in an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from predictor.errors import BadInput
from predictor.tasks.base import V2Answer

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
#: Inputs and outputs one request may name (the models take one input, answer a few outputs).
MAX_TENSORS = 16
_NUMPY = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1"}


def parse_request(body: bytes, headers: Mapping[str, str], model_name: str) -> InferRequest:
    """A v2 REST request body (JSON, or JSON header plus binary tensors) as an ``InferRequest``.

    Args:
        body: the request body.
        headers: request headers, lower-case names.
        model_name: the model named by the URL.

    Raises:
        BadInput: malformed JSON, framing or tensor descriptions; the message says which.
    """
    head, tail = _split(body, headers.get(HEADER_LENGTH))
    try:
        document: Any = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise BadInput("malformed request: body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadInput("malformed request: the body must be a JSON object")
    inputs = _inputs(document.get("inputs"), tail)
    parameters = document.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadInput('"parameters" must be an object')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadInput('"id" must be a string')
    return InferRequest(
        model_name,
        inputs,
        request_id=request_id,
        parameters=parameters,
        request_outputs=_outputs(document.get("outputs")),
    )


def _inputs(raw_inputs: object, tail: bytes) -> list[InferInput]:
    """The inputs, each raw one given its slice of the binary tail, which must add up."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadInput('malformed request: "inputs" must be a non-empty list')
    if len(raw_inputs) > MAX_TENSORS:
        raise BadInput(f"malformed request: more than {MAX_TENSORS} inputs")
    offset = 0
    inputs = []
    for index, raw in enumerate(raw_inputs):
        tensor, size = _input(raw, index)
        if size is not None:
            if offset + size > len(tail):
                raise BadInput(
                    f"inputs[{index}]: binary_data_size {size} runs past the end of the body"
                )
            tensor._raw_data = tail[offset : offset + size]
            offset += size
        inputs.append(tensor)
    if offset != len(tail):
        raise BadInput(f"the body holds {len(tail) - offset} bytes no input declares")
    return inputs


def _split(body: bytes, length_header: str | None) -> tuple[bytes, bytes]:
    if length_header is None:
        return body, b""
    text = length_header.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise BadInput(f"{HEADER_LENGTH} must be a non-negative integer")
    length = int(text)
    if length > len(body):
        raise BadInput(f"{HEADER_LENGTH} ({length}) is longer than the body ({len(body)})")
    return body[:length], body[length:]


def _input(raw: object, index: int) -> tuple[InferInput, int | None]:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise BadInput(f"{where} must be an object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise BadInput(f"{where} needs a name and a datatype (strings)")
    if not isinstance(shape, list):
        raise BadInput(f"{where} needs a shape: a list of integers")
    params = raw.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadInput(f"{where}.parameters must be an object")
    size = (params or {}).get("binary_data_size")
    has_data = "data" in raw
    if size is None:
        if not has_data:
            raise BadInput(f"{where} needs data (or parameters.binary_data_size)")
        return InferInput(name, shape, datatype, raw["data"], params), None
    if has_data:
        raise BadInput(f"{where} has both data and binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadInput(f"{where}.parameters.binary_data_size must be a non-negative integer")
    return InferInput(name, shape, datatype, None, params), size


def _outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise BadInput(f'"outputs" must be a list of at most {MAX_TENSORS} objects')
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadInput(f"outputs[{index}] must be an object with a name")
        params = item.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise BadInput(f"outputs[{index}].parameters must be an object")
        outputs.append(RequestedOutput(item["name"], params))
    return outputs


def encode_answer(answer: V2Answer) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The answer's body and headers: JSON, or JSON plus raw tensors for binary outputs."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in answer.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.array.shape),
        }
        if tensor.binary:
            blob = raw_bytes(tensor.datatype, tensor.array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(tensor.datatype, tensor.array)
        described.append(entry)
    head = orjson.dumps(
        {
            "model_name": answer.model_name,
            "model_version": answer.model_version,
            "id": answer.id,
            "outputs": described,
        }
    )
    if not blobs:
        return head, [(b"content-type", JSON_TYPE)]
    headers = [
        (b"content-type", BINARY_TYPE),
        (HEADER_LENGTH.encode(), str(len(head)).encode()),
    ]
    return head + b"".join(blobs), headers


def raw_bytes(datatype: str, array: np.ndarray) -> bytes:
    """A tensor in the binary extension's layout."""
    if datatype == "BYTES":
        parts = []
        for item in array.reshape(-1):
            value = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(value).to_bytes(4, "little"))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=_NUMPY[datatype]).tobytes()


def json_data(datatype: str, array: np.ndarray) -> list[Any]:
    """A tensor's values as a flat JSON list (``BYTES`` as UTF-8 text)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    values: list[Any] = flat.tolist()
    return values

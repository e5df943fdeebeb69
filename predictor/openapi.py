"""The OpenAPI document of the routes served, for ``/openapi.json`` and the ``/docs`` page.

Built from the route table itself (:func:`predictor.http_api.routes`), so it lists exactly
what this server, in this configuration, answers. The v2 shapes are the Open Inference
Protocol's own schemas (``open_inference_rest.yaml``); the v1 shapes, the model config,
labels and repository index are this server's. Every operation carries examples: a raw
image body, a multipart upload, v1 JSON, v2 JSON and the v2 binary tensor extension.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from predictor import __version__
from predictor.http_routes import Route


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"application/json": content}


def _sample_png() -> str:
    """A small grey PNG as base64: a valid image for "Try it out"."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (32, 32), 200).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TENSOR_DATA: dict[str, Any] = {
    "type": "array",
    "items": {
        "anyOf": [_ref("tensor_data"), {"type": "number"}, {"type": "string"}, {"type": "boolean"}]
    },
}
_PARAMETERS = {"type": "object", "additionalProperties": True}
_STRINGS = {"type": "array", "items": {"type": "string"}}
#: An input of a request and an output of an answer have the same shape in the OIP.
_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "parameters": _ref("parameters"),
        "data": _ref("tensor_data"),
    },
    "required": ["name", "shape", "datatype", "data"],
}
SCHEMAS: dict[str, Any] = {
    # The Open Inference Protocol's schemas (kserve/open-inference-protocol).
    "metadata_server_response": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": _STRINGS,
        },
        "required": ["name", "version", "extensions"],
    },
    "metadata_tensor": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": _PARAMETERS,
        },
        "required": ["name", "datatype", "shape"],
    },
    "metadata_model_response": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": _STRINGS,
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("metadata_tensor")},
            "outputs": {"type": "array", "items": _ref("metadata_tensor")},
        },
        "required": ["name", "platform"],
    },
    "parameters": _PARAMETERS,
    "tensor_data": _TENSOR_DATA,
    "request_input": _TENSOR,
    "request_output": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "parameters": _ref("parameters")},
        "required": ["name"],
    },
    "inference_request": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": _ref("parameters"),
            "inputs": {"type": "array", "items": _ref("request_input")},
            "outputs": {"type": "array", "items": _ref("request_output")},
        },
        "required": ["inputs"],
    },
    "response_output": _TENSOR,
    "inference_response": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": _ref("parameters"),
            "outputs": {"type": "array", "items": _ref("response_output")},
        },
        "required": ["model_name", "outputs"],
    },
    "error": _ERROR,
    # This server's own shapes.
    "v1_request": {
        "type": "object",
        "properties": {
            "instances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "image_bytes": {"type": "object", "properties": {"b64": {"type": "string"}}}
                    },
                },
            },
            "parameters": {
                "type": "object",
                "properties": {
                    "top_k": {"type": "integer", "minimum": 1},
                    "timeout_ms": {"type": "integer", "minimum": 1},
                },
            },
        },
        "required": ["instances"],
    },
    "v1_response": {
        "type": "object",
        "properties": {
            "predictions": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "label": {"type": "string"},
                            "score": {"type": "number"},
                            "class_id": {"type": "integer"},
                        },
                    },
                },
            }
        },
        "required": ["predictions"],
    },
    "upload": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "an image file"},
            "top_k": {"type": "integer", "minimum": 1},
        },
        "required": ["image"],
    },
    "model_config": {"type": "object", "additionalProperties": True},
    "config_patch": {
        "type": "object",
        "properties": {"top_k": {"type": "integer", "minimum": 1}},
        "additionalProperties": False,
    },
    "labels": {"type": "object", "properties": {"labels": _STRINGS}, "required": ["labels"]},
    "repository_index": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {
                    "type": "string",
                    "enum": ["READY", "UNAVAILABLE", "LOADING", "UNLOADING"],
                },
                "reason": {"type": "string"},
            },
            "required": ["name", "state", "reason"],
        },
    },
    "load_request": {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "object",
                "properties": {"config": {"type": "string", "description": "JSON object as text"}},
            }
        },
    },
}

_BINARY_NOTE = (
    "The v2 binary tensor extension: send `Inference-Header-Content-Length: <n>`; the body "
    "is a JSON header of n bytes, then the raw tensors. An input sent raw has "
    '`"parameters": {"binary_data_size": <bytes>}` instead of `data`; BYTES elements are '
    "each preceded by their length (4 bytes, little-endian). Ask for raw outputs with "
    '`"parameters": {"binary_data_output": true}` or per output `"binary_data": true`.'
)


def _operation(route: Route, png: str) -> dict[str, Any]:
    """The OpenAPI operation of one route."""
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}{route.template}".replace("/", "_")
        .replace("{", "")
        .replace("}", "")
        .replace(":", "_"),
        "tags": [_tag(route.template)],
        "responses": {"default": {"description": "error", "content": _json(_ref("error"))}},
    }
    names = [p[1:-1] for p in route.template.replace(":", "/").split("/") if p.startswith("{")]
    if names:
        operation["parameters"] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
    if not route.open:
        operation["security"] = [{"bearer": []}]
    body, ok = _shapes(route, png)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"]["200"] = ok
    return operation


def _tag(template: str) -> str:
    if "repository" in template:
        return "repository"
    if template.startswith("/v1"):
        return "v1"
    if template.startswith("/v2"):
        return "v2"
    return "server"


def _shapes(route: Route, png: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Request body and 200 answer of a route."""
    t = route.template
    if t.endswith(":predict"):
        body = {
            "required": True,
            "description": "A raw image body (`Content-Type: image/jpeg|png|webp|bmp`), a "
            "multipart upload (one image per file part, e.g. `curl -F image=@cat.jpg`), or "
            "KServe v1 JSON.",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": _ref("upload")},
                **_json(
                    _ref("v1_request"),
                    {"instances": [{"image_bytes": {"b64": png}}], "parameters": {"top_k": 3}},
                ),
            },
        }
        answer = {"label": "3", "score": 0.979, "class_id": 3}
        return body, _ok(_ref("v1_response"), {"predictions": [[answer]]})
    if t.endswith("/infer"):
        request = {
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [png]}],
            "parameters": {"top_k": 2},
        }
        binary_header = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 123},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
        body = {
            "required": True,
            "description": "v2 JSON (`image`: BYTES of base64 images; or `tensor`: FP32 "
            "[N, C, H, W] normalised as the metadata's `parameters` say). " + _BINARY_NOTE,
            "content": {
                **_json(_ref("inference_request"), request),
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": orjson_text(binary_header)
                    + "<123 bytes: 4-byte length, then the image>",
                },
            },
        }
        answer = {
            "model_name": "digits",
            "model_version": "1",
            "id": "42",
            "outputs": [
                {"name": "labels", "datatype": "BYTES", "shape": [1, 2], "data": ["5", "6"]},
                {"name": "scores", "datatype": "FP32", "shape": [1, 2], "data": [0.981, 0.005]},
                {"name": "class_ids", "datatype": "INT64", "shape": [1, 2], "data": [5, 6]},
            ],
        }
        return body, _ok(_ref("inference_response"), answer)
    if route.method == "PATCH":
        body = {"required": True, "content": _json(_ref("config_patch"), {"top_k": 3})}
        return body, _ok(_ref("model_config"))
    if t.endswith("/load"):
        config = '{"max_batch_size": 16, "max_batch_delay_ms": 2}'
        body = {"content": _json(_ref("load_request"), {"parameters": {"config": config}})}
        return body, _ok({"type": "object"}, {"name": "digits", "load": True})
    if t.endswith("/unload"):
        return None, _ok({"type": "object"}, {"name": "digits", "unload": True})
    if t.endswith("/index"):
        body = {"content": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}})}
        index = [{"name": "digits", "version": "1", "state": "READY", "reason": ""}]
        return body, _ok(_ref("repository_index"), index)
    if t.endswith("/config"):
        return None, _ok(_ref("model_config"))
    if t.endswith("/labels"):
        return None, _ok(_ref("labels"), {"labels": ["0", "1", "2"]})
    if t in ("/v2", "/v2/"):
        return None, _ok(_ref("metadata_server_response"))
    if t.startswith("/v2/models/{model}") and not t.endswith("/ready"):
        return None, _ok(_ref("metadata_model_response"))
    if t == "/metrics":
        return None, {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if t.startswith("/docs"):
        return None, {
            "description": "the page",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    return None, _ok({"type": "object"})


def _ok(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    return {"description": "OK", "content": _json(schema, example)}


def orjson_text(document: Any) -> str:
    """Compact JSON text of ``document``."""
    import orjson

    return orjson.dumps(document).decode()


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes``."""
    png = _sample_png()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route, png)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "gpu-predictor",
            "version": __version__,
            "description": "KServe v1 and v2 (Open Inference Protocol) image inference with "
            "dynamic batching. " + _BINARY_NOTE,
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

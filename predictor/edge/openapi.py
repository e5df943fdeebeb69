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
from predictor.edge.openapi_schemas import SCHEMAS, ref
from predictor.edge.routes import Route


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
        "responses": {"default": {"description": "error", "content": _json(ref("error"))}},
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


Shapes = tuple[dict[str, Any] | None, dict[str, Any]]


def _ok(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    return {"description": "OK", "content": _json(schema, example)}


def _shapes(route: Route, png: str) -> Shapes:
    """Request body and 200 answer of a route."""
    t = route.template
    if t.endswith(":predict"):
        return _predict_shapes(png)
    if t.endswith(":annotate"):
        body, _ = _predict_shapes(png)
        drawn = "the image as a viewer shows it, with the result drawn on it (boxes, labels "
        return body, _text(drawn + "and scores; a classifier's top-k)", "image/jpeg", "image/png")
    if t.endswith("/infer"):
        return _infer_shapes(png)
    if route.method == "PATCH":
        body = {"required": True, "content": _json(ref("config_patch"), {"top_k": 3})}
        return body, _ok(ref("model_config"))
    for suffix, shapes in _SIMPLE.items():
        if t.endswith(suffix):
            return shapes
    if t.startswith("/v2/models/{model}") and not t.endswith("/ready"):
        return None, _ok(ref("metadata_model_response"))
    return None, _ok({"type": "object"})


def _predict_shapes(png: str) -> Shapes:
    body = {
        "required": True,
        "description": "A raw image body (`Content-Type: image/jpeg|png|webp|bmp`), a "
        "multipart upload (one image per file part, e.g. `curl -F image=@cat.jpg`), or "
        "KServe v1 JSON.",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": ref("upload")},
            **_json(
                ref("v1_request"),
                {"instances": [{"image_bytes": {"b64": png}}], "parameters": {"top_k": 3}},
            ),
        },
    }
    answer = {"label": "3", "score": 0.979, "class_id": 3}
    return body, _ok(ref("v1_response"), {"predictions": [[answer]]})


def _infer_shapes(png: str) -> Shapes:
    request = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [png]}],
        "parameters": {"top_k": 2},
    }
    raw_input = {"name": "image", "datatype": "BYTES", "shape": [1]}
    binary_header = {
        "inputs": [{**raw_input, "parameters": {"binary_data_size": 123}}],
        "parameters": {"binary_data_output": True},
    }
    body = {
        "required": True,
        "description": "v2 JSON (`image`: BYTES of base64 images; or `tensor`: FP32 "
        "[N, C, H, W] normalised as the metadata's `parameters` say). " + _BINARY_NOTE,
        "content": {
            **_json(ref("inference_request"), request),
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
    return body, _ok(ref("inference_response"), answer)


def _text(description: str, *media: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {m: {"schema": {"type": "string"}} for m in media},
    }


_LOAD_CONFIG = '{"max_batch_size": 16, "max_batch_delay_ms": 2}'
#: Routes told apart by how their template ends: (request body, 200 answer).
_SIMPLE: dict[str, Shapes] = {
    "/load": (
        {"content": _json(ref("load_request"), {"parameters": {"config": _LOAD_CONFIG}})},
        _ok({"type": "object"}, {"name": "digits", "load": True}),
    ),
    "/unload": (None, _ok({"type": "object"}, {"name": "digits", "unload": True})),
    "/index": (
        {"content": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}})},
        _ok(
            ref("repository_index"),
            [{"name": "digits", "version": "1", "state": "READY", "reason": ""}],
        ),
    ),
    "/config": (None, _ok(ref("model_config"))),
    "/labels": (None, _ok(ref("labels"), {"labels": ["0", "1", "2"]})),
    "/v2": (None, _ok(ref("metadata_server_response"))),
    "/v2/": (None, _ok(ref("metadata_server_response"))),
    "/metrics": (None, _text("Prometheus text format", "text/plain")),
    "/docs": (None, _text("the API page", "text/html")),
    "/docs/{asset}": (
        None,
        _text("a file of the page", "text/css", "text/javascript", "image/png"),
    ),
}


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

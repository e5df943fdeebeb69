"""The schemas of the OpenAPI document: the Open Inference Protocol's, and this server's.

The v2 shapes are those of the OIP REST document (``open_inference_rest.yaml`` in
kserve/open-inference-protocol); the v1 shapes, uploads, the model config, labels and the
repository index are this server's own.
"""

from __future__ import annotations

from typing import Any

from predictor.store.spec import MAX_DETECTIONS


def ref(name: str) -> dict[str, str]:
    """A reference to one of :data:`SCHEMAS`."""
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_TENSOR_DATA: dict[str, Any] = {
    "type": "array",
    "items": {
        "anyOf": [ref("tensor_data"), {"type": "number"}, {"type": "string"}, {"type": "boolean"}]
    },
}
_PARAMETERS = {"type": "object", "additionalProperties": True}
#: The per-request parameters with a number's range: a classifier's and a detector's.
_PARAMETER_SCHEMAS: dict[str, Any] = {
    "top_k": {"type": "integer", "minimum": 1, "description": "classifiers"},
    "score_threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "detectors"},
    "max_detections": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_DETECTIONS,
        "description": "detectors",
    },
}
_STRINGS = {"type": "array", "items": {"type": "string"}}
#: An input of a request and an output of an answer have the same shape in the OIP.
_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "parameters": ref("parameters"),
        "data": ref("tensor_data"),
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
            "inputs": {"type": "array", "items": ref("metadata_tensor")},
            "outputs": {"type": "array", "items": ref("metadata_tensor")},
        },
        "required": ["name", "platform"],
    },
    "parameters": _PARAMETERS,
    "tensor_data": _TENSOR_DATA,
    "request_input": _TENSOR,
    "request_output": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "parameters": ref("parameters")},
        "required": ["name"],
    },
    "inference_request": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "parameters": ref("parameters"),
            "inputs": {"type": "array", "items": ref("request_input")},
            "outputs": {"type": "array", "items": ref("request_output")},
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
            "parameters": ref("parameters"),
            "outputs": {"type": "array", "items": ref("response_output")},
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
        "description": "One prediction per image: a classifier's top-k list, or a detector's "
        "detections (boxes x1, y1, x2, y2 in the image's pixels as a viewer shows it).",
        "properties": {
            "predictions": {
                "type": "array",
                "items": {"anyOf": [ref("v1_top_k"), ref("v1_detections")]},
            }
        },
        "required": ["predictions"],
    },
    "v1_top_k": {
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
    "v1_detections": {
        "type": "object",
        "properties": {
            "detections": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "box": {
                            "type": "array",
                            "items": {"type": "number"},
                            "minItems": 4,
                            "maxItems": 4,
                        },
                        "score": {"type": "number"},
                        "label": {"type": "string"},
                        "class_id": {"type": "integer"},
                    },
                },
            },
            "image_size": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 2,
                "maxItems": 2,
            },
        },
        "required": ["detections", "image_size"],
    },
    "upload": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "an image file"},
            **_PARAMETER_SCHEMAS,
            "classes": {
                "type": "string",
                "description": "detectors: labels or class ids to keep, separated by commas",
            },
        },
        "required": ["image"],
    },
    "model_config": {"type": "object", "additionalProperties": True},
    "config_patch": {
        "type": "object",
        "description": "A classifier takes top_k; a detector score_threshold, max_detections "
        "and classes.",
        "properties": {
            **_PARAMETER_SCHEMAS,
            "classes": {
                "anyOf": [
                    {"type": "array", "items": {"type": ["string", "integer"]}},
                    {"type": "string"},
                    {"type": "null"},
                ]
            },
        },
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

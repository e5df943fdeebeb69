"""What a served model tells its clients: v2 metadata, the config document and its labels.

The v2 metadata follows the Open Inference Protocol (fields without a value are left out,
never ``null``). The config document carries this server's own names and, where Triton's
model configuration has a field for the same thing, that field too (``max_batch_size``,
``input``, ``output``, ``dynamic_batching``, ``instance_group``), so tools written for Triton
read it unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from predictor.serving.model import ImageModel

PLATFORM = "pytorch"
BACKEND = "gpu-predictor"
_TRITON_TYPES = {
    "BYTES": "TYPE_STRING",
    "FP32": "TYPE_FP32",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
}


def metadata(model: ImageModel) -> dict[str, Any]:
    """The v2 model metadata (``GET /v2/models/<m>``), the task's inputs and outputs."""
    return {
        "name": model.name,
        "versions": [model.spec.version],
        "platform": PLATFORM,
        "inputs": model.task.input_metadata(),
        "outputs": model.task.output_metadata(),
    }


def labels(model: ImageModel) -> dict[str, Any]:
    """``GET /v2/models/<m>/labels``: index = class id."""
    return {"labels": list(model.spec.labels)}


def config(model: ImageModel) -> dict[str, Any]:
    """``GET /v2/models/<m>/config``: how the model is built and served, right now."""
    spec, settings, batcher = model.spec, model.settings, model.batcher
    devices = model.devices()
    delay_us = round(settings.max_batch_delay_ms * 1000)
    inputs, outputs = model.get_input_types(), model.get_output_types()
    gpus = [int(d.split(":")[1]) for d in devices if d.startswith("cuda:")]
    instances: dict[str, Any] = {
        "kind": "KIND_GPU" if gpus else "KIND_CPU",
        "count": len(batcher.workers),
    }
    if gpus:
        instances["gpus"] = gpus
    document: dict[str, Any] = {
        "name": model.name,
        "version": spec.version,
        "task": spec.task,
        "platform": PLATFORM,
        "backend": BACKEND,
        "arch": spec.arch_label,
        "preprocessing": model.task.preprocessing(),
        "labels": len(spec.labels),
        "batching": {
            "batch_size": batcher.max_batch_size,
            "configured_max_batch_size": settings.max_batch_size,
            "tune_batch_size": settings.tune_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "queue_capacity": settings.queue_capacity,
        },
        "devices": devices,
        "dtype": model.dtype_name,
        "jit": "trace" if model.traced else "off",
        "frozen": model.traced and settings.freeze,
        "defaults": dict(model.defaults),
        # Triton's model configuration fields, for tools written for Triton.
        "max_batch_size": batcher.max_batch_size,
        "input": [_triton_tensor(t) for t in inputs],
        "output": [_triton_tensor(t) for t in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": delay_us},
        "instance_group": [instances],
    }
    return document


def _triton_tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    """A v2 metadata tensor as Triton's config describes it (batch dimension left out)."""
    return {
        "name": tensor["name"],
        "data_type": _TRITON_TYPES[tensor["datatype"]],
        "dims": tensor["shape"][1:] or [1],
    }

"""The tasks by name: :func:`task_for` picks the one a manifest names.

Adding a task (segmentation, say) is one new module registered in :data:`TASKS`.
"""

from __future__ import annotations

from typing import Any

from predictor.runtime.devices import resolve_dtype
from predictor.runtime.engine import Engine
from predictor.store.spec import ModelSpec
from predictor.tasks.base import Task
from predictor.tasks.classification import Classification
from predictor.tasks.detection import Detection

#: Task classes by the manifest's ``task`` value.
TASKS: dict[str, type[Task]] = {Classification.name: Classification, Detection.name: Detection}


def task_for(spec: ModelSpec) -> Task:
    """The task of a model directory (the manifest's ``task`` was checked when read)."""
    return TASKS[spec.task](spec)


def engine_for(
    spec: ModelSpec,
    module: Any,
    device: str,
    dtype: str = "auto",
    max_batch_size: int = 32,
    jit: bool = True,
    freeze: bool = True,
) -> Engine:
    """An engine running ``module`` for ``spec``'s task on ``device``.

    Args:
        spec: the model's manifest.
        module: its network (CPU, eval mode; the engine copies it).
        device: ``cpu`` or ``cuda:N``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        max_batch_size: the largest batch it will run.
        jit: trace the network (checked against eager; the manifest can refuse it).
        freeze: freeze the trace (only for models that stay loaded).
    """
    torch_dtype = resolve_dtype(dtype, device)
    runner = task_for(spec).runner(module, device, torch_dtype, max_batch_size, jit, freeze)
    return Engine(runner, device, torch_dtype, max_batch_size)

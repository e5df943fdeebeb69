"""A model's serving configuration: what it was loaded with, and what changes at runtime.

Two kinds of setting, kept apart on purpose:

* :class:`ModelSettings`, fixed for a loaded model: batch size, batch delay, queue capacity,
  devices, dtype, tracing. They come from the server's flags and may be overridden for one
  load through the repository API (Triton's ``{"parameters": {"config": "<json>"}}``); a
  change means building new engines, so it takes a load.
* the per-request defaults (the task's parameters, ``top_k`` for a classifier) a request may
  override with its own ``parameters``; ``PATCH /v2/models/<m>/config`` changes them for
  the next request (:func:`apply_patch`).

No torch, no KServe: the edges use this module to validate client input before any work.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from predictor.config import DTYPES, Settings
from predictor.errors import BadInput

if TYPE_CHECKING:
    from predictor.runtime.budget import MemoryBudget
    from predictor.tasks.base import Task

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")


@dataclass(frozen=True)
class ModelSettings:
    """How one loaded model is served.

    Attributes:
        max_batch_size: the largest batch a device runs.
        max_batch_delay_ms: longest wait for a batch to fill after its first image.
        queue_capacity: images admitted but not running; more is a 503.
        devices: ``("auto",)`` or device names such as ``("cuda:0", "cuda:1")``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        jit: run the network as a checked TorchScript trace.
        tune_batch_size: batch up to the best size measured at warm-up.
        defaults: per-request defaults of this load (over the manifest's), checked by the
            task.
        freeze: freeze the TorchScript trace; off when models may be unloaded, since
            PyTorch never frees a frozen trace's weights.
    """

    max_batch_size: int
    max_batch_delay_ms: float
    queue_capacity: int
    devices: tuple[str, ...]
    dtype: str
    jit: bool
    tune_batch_size: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    freeze: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelSettings:
        """The server-wide defaults every model starts from."""
        return cls(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            queue_capacity=settings.queue_capacity,
            devices=tuple(settings.device_list()),
            dtype=settings.dtype,
            jit=settings.jit == "trace",
            tune_batch_size=settings.tune_batch_size,
            freeze=settings.model_control == "none",
        )

    @property
    def max_batch_delay_s(self) -> float:
        """``max_batch_delay_ms`` in seconds."""
        return self.max_batch_delay_ms / 1000.0


@dataclass(frozen=True)
class ServerLimits:
    """The server-wide limits every model is built with.

    Attributes:
        max_image_pixels: larger images are refused (413) from their header.
        request_timeout_s: the server's deadline; per-request timeouts can only shorten it.
        max_consecutive_failures: failed batches in a row before unhealthy (0: never).
        budget: the process's memory budget decodes are held against (None: unbounded).
    """

    max_image_pixels: int
    request_timeout_s: float
    max_consecutive_failures: int
    budget: MemoryBudget | None = None


# -- validation of client-supplied values -------------------------------------------------------


def _int(low: int, high: int) -> Callable[[object, str], int]:
    def check(value: object, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadInput(f"{where} must be an integer from {low} to {high}")
        return value

    return check


def _number(low: float, high: float) -> Callable[[object, str], float]:
    def check(value: object, where: str) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(float(value)) or not low <= float(value) <= high:  # type: ignore[arg-type]
            raise BadInput(f"{where} must be a number from {low:g} to {high:g}")
        return float(value)  # type: ignore[arg-type]

    return check


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadInput(f"{where} must be true or false")
    return value


def _dtype(value: object, where: str) -> str:
    if value not in DTYPES:
        raise BadInput(f"{where} must be one of {', '.join(DTYPES)}")
    return str(value)


def _devices(value: object, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= 64:
        raise BadInput(f"{where} must be a list of devices (auto, cpu, cuda, cuda:N)")
    names = tuple(str(item).strip() for item in items if isinstance(item, str))
    if len(names) != len(items) or not all(_DEVICE_RE.match(n) for n in names):
        raise BadInput(f"{where} must be a list of devices (auto, cpu, cuda, cuda:N)")
    if "auto" in names and len(names) > 1:
        raise BadInput(f"{where}: auto stands alone")
    return names


_LOAD_KEYS: dict[str, Callable[[object, str], Any]] = {
    "max_batch_size": _int(1, 4096),
    "max_batch_delay_ms": _number(0, 10_000),
    "queue_capacity": _int(1, 1_000_000),
    "devices": _devices,
    "dtype": _dtype,
    "jit": _bool,
    "tune_batch_size": _bool,
}


def _known(document: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    unknown = sorted(str(k) for k in set(document) - set(keys))
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise BadInput(f"{where}: unknown setting(s) {shown}; allowed: {', '.join(keys)}")


def parse_load_config(text: object, base: ModelSettings, task: Task) -> ModelSettings:
    """Apply a load's config override (a JSON object as text) to ``base``.

    Accepts this server's names (``max_batch_size``, ``max_batch_delay_ms``,
    ``queue_capacity``, ``devices``, ``dtype``, ``jit``, ``tune_batch_size``), the task's
    per-request defaults (``top_k`` for a classifier) and, for tools written for Triton,
    ``dynamic_batching.max_queue_delay_microseconds``.

    Raises:
        BadInput: not JSON, an unknown key, a value out of range, or a queue smaller than
            a batch; the message names the key.
    """
    where = "parameters.config"
    if not isinstance(text, str):
        raise BadInput(f"{where} must be a JSON object as a string")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput(f"{where} is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadInput(f"{where} must be a JSON object")
    document = dict(document)
    batching = document.pop("dynamic_batching", None)
    if batching is not None:
        if not isinstance(batching, dict) or set(batching) - {"max_queue_delay_microseconds"}:
            raise BadInput(f"{where}.dynamic_batching takes max_queue_delay_microseconds only")
        if "max_queue_delay_microseconds" in batching:
            micros = _int(0, 10_000_000)(
                batching["max_queue_delay_microseconds"],
                f"{where}.dynamic_batching.max_queue_delay_microseconds",
            )
            document.setdefault("max_batch_delay_ms", micros / 1000.0)
    document.pop("name", None)  # Triton clients send the model's name back; it is not a setting
    _known(document, [*_LOAD_KEYS, *task.parameters], where)
    values = {k: _LOAD_KEYS[k](v, f"{where}.{k}") for k, v in document.items() if k in _LOAD_KEYS}
    defaults = task.check_parameters({k: v for k, v in document.items() if k not in _LOAD_KEYS})
    settings: ModelSettings = replace(base, defaults=defaults, **values)
    if settings.queue_capacity < settings.max_batch_size:
        raise BadInput(
            f"{where}: queue_capacity ({settings.queue_capacity}) must be >= max_batch_size "
            f"({settings.max_batch_size}), else a batch can never fill"
        )
    return settings


def apply_patch(document: object, defaults: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """The request defaults after a ``PATCH /v2/models/<m>/config`` body.

    Raises:
        BadInput: not an object, a key the task does not take, or a value out of range.
    """
    if not isinstance(document, dict) or not document:
        raise BadInput('the body must be a JSON object of defaults, e.g. {"top_k": 3}')
    _known(document, task.parameters, "config")
    return {**defaults, **task.check_parameters(document)}

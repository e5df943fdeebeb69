"""Which devices and compute dtype the engines run on: ``--devices`` and ``--dtype`` resolved.

Kept apart from the engine so the CLI and the benchmark peers can check a request for a
device before any model is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceError(ValueError):
    """A requested device or dtype cannot be used on this machine."""


def resolve_devices(requested: Sequence[str]) -> list[str]:
    """Turn ``--devices`` into concrete device names.

    Args:
        requested: ``["auto"]`` or names such as ``cpu``, ``cuda``, ``cuda:1``.

    Returns:
        Device names such as ``["cuda:0", "cuda:1"]`` or ``["cpu"]``.

    Raises:
        DeviceError: a CUDA device is asked for that is not visible.
    """
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if list(requested) == ["auto"]:
        return [f"cuda:{i}" for i in range(visible)] or ["cpu"]
    devices = []
    for name in requested:
        if name == "cuda":
            name = "cuda:0"
        if name.startswith("cuda:") and int(name.split(":")[1]) >= visible:
            raise DeviceError(
                f"--devices: unknown device {name}: {visible} CUDA device(s) visible here"
            )
        devices.append(name)
    return devices


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The compute dtype: ``auto`` is float16 on CUDA and float32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise DeviceError(f"--dtype: unknown dtype {dtype!r}")
    return _DTYPES[dtype]

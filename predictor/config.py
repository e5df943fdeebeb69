"""Server settings: one frozen dataclass, filled from CLI flags and ``PREDICTOR_*`` env vars.

Precedence is flag, then environment variable, then default. Every value is validated
eagerly, cross-checks included, and a bad value is reported as one clear line that names
the flag and the environment variable.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DTYPES = ("auto", "float32", "float16", "bfloat16")
JIT_MODES = ("trace", "off")
MODEL_CONTROL_MODES = ("none", "explicit")
_MODEL_LIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(,[A-Za-z0-9][A-Za-z0-9_.-]{0,62})*$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is invalid; the message names the flag and says what is allowed."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


@dataclass(frozen=True)
class Settings:
    """Everything ``gpu-predictor serve`` is configured with.

    Attributes mirror the CLI flags (``max_batch_delay_ms`` is ``--max-batch-delay-ms`` and
    ``PREDICTOR_MAX_BATCH_DELAY_MS``). Units are in the names.
    """

    model_dir: Path = Path("models")
    model_name: str | None = None
    host: str = "0.0.0.0"  # noqa: S104 - a pod must listen on all interfaces
    http_port: int = 8080
    grpc_port: int = 8081
    enable_grpc: bool = True
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    tune_batch_size: bool = True
    queue_capacity: int = 256
    devices: str = "auto"
    dtype: str = "auto"
    jit: str = "trace"
    max_body_bytes: int = 32 * MIB
    max_image_pixels: int = 40_000_000
    request_timeout_ms: int = 30_000
    drain_timeout_s: float = 25.0
    auth_token_file: Path | None = None
    decode_workers: int = 0
    max_consecutive_failures: int = 5
    log_level: str = "INFO"
    model_control: str = "none"
    load_models: str = "all"
    docs: bool = True

    def __post_init__(self) -> None:
        """Validate every field and the cross-field rules."""
        _check(1 <= self.http_port <= 65535, "--http-port must be in 1..65535")
        _check(1 <= self.grpc_port <= 65535, "--grpc-port must be in 1..65535")
        _check(
            not self.enable_grpc or self.http_port != self.grpc_port,
            f"--http-port and --grpc-port must differ (both {self.http_port})",
        )
        _check(1 <= self.max_batch_size <= 4096, "--max-batch-size must be in 1..4096")
        _check(
            0 <= self.max_batch_delay_ms <= 10_000,
            f"--max-batch-delay-ms must be in 0..10000 (got {self.max_batch_delay_ms:g})",
        )
        _check(
            self.queue_capacity >= self.max_batch_size,
            f"--queue-capacity ({self.queue_capacity}) must be >= --max-batch-size "
            f"({self.max_batch_size}), else a batch can never fill",
        )
        _check(self.queue_capacity <= 1_000_000, "--queue-capacity must be <= 1000000")
        _parse_devices(self.devices)  # syntax only; availability is checked at engine build
        _check(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}")
        _check(self.jit in JIT_MODES, f"--jit must be one of {', '.join(JIT_MODES)}")
        _check(self.max_body_bytes >= 1024, "--max-body-bytes must be >= 1024")
        _check(self.max_image_pixels >= 1, "--max-image-pixels must be >= 1")
        _check(self.request_timeout_ms >= 1, "--request-timeout-ms must be >= 1")
        _check(
            self.max_batch_delay_ms < self.request_timeout_ms,
            f"--max-batch-delay-ms ({self.max_batch_delay_ms:g}) must be below "
            f"--request-timeout-ms ({self.request_timeout_ms})",
        )
        _check(self.drain_timeout_s >= 0, "--drain-timeout-s must be >= 0")
        _check(self.decode_workers >= 0, "--decode-workers must be >= 0 (0: one per core)")
        _check(
            self.max_consecutive_failures >= 0,
            "--max-consecutive-failures must be >= 0 (0: never mark unhealthy)",
        )
        _check(self.log_level in LOG_LEVELS, f"--log-level must be one of {LOG_LEVELS}")
        _check(
            self.model_control in MODEL_CONTROL_MODES,
            f"--model-control must be one of {', '.join(MODEL_CONTROL_MODES)}",
        )
        _check(
            self.load_models in ("all", "none") or bool(_MODEL_LIST_RE.match(self.load_models)),
            "--load-models must be all, none or a comma-separated list of model names",
        )
        _check(
            self.load_models != "none" or self.model_control == "explicit",
            "--load-models none serves nothing unless --model-control explicit lets models be "
            "loaded later",
        )
        _check(
            self.model_dir.is_dir(),
            f"--model-dir {self.model_dir} is not a directory",
        )
        if self.auth_token_file is not None:
            _check(
                self.auth_token_file.is_file(),
                f"--auth-token-file {self.auth_token_file} is not a readable file",
            )
            _check(
                bool(self.auth_token()),
                f"--auth-token-file {self.auth_token_file} is empty",
            )

    def models_to_load(self) -> list[str] | None:
        """``--load-models`` as a list of names; None means every model found."""
        if self.load_models == "all":
            return None
        if self.load_models == "none":
            return []
        return self.load_models.split(",")

    def device_list(self) -> list[str]:
        """The ``--devices`` value as a list; ``["auto"]`` when automatic."""
        return _parse_devices(self.devices)

    @property
    def max_batch_delay_s(self) -> float:
        """``max_batch_delay_ms`` in seconds."""
        return self.max_batch_delay_ms / 1000.0

    @property
    def request_timeout_s(self) -> float:
        """``request_timeout_ms`` in seconds."""
        return self.request_timeout_ms / 1000.0

    @property
    def effective_decode_workers(self) -> int:
        """Decode threads: the flag, or one per available core."""
        if self.decode_workers:
            return self.decode_workers
        return available_cpus()

    def auth_token(self) -> str | None:
        """The bearer token, surrounding whitespace stripped; None when auth is off."""
        if self.auth_token_file is None:
            return None
        return self.auth_token_file.read_text(encoding="utf-8").strip()


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota.

    In a pod, ``os.cpu_count()`` and the affinity mask show the node's cores; the CPU limit
    is a cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).
    """
    cpus = len(os.sched_getaffinity(0))
    quota: float | None = None
    try:
        text = (cgroup_root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:
            us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
            if us > 0 and period > 0:
                quota = us / period
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


def _parse_devices(text: str) -> list[str]:
    items = [part.strip() for part in text.split(",")]
    if items == ["auto"]:
        return items
    for item in items:
        if not _DEVICE_RE.match(item):
            raise SettingsError(
                f"--devices: unknown device {item!r}; use auto, cpu, cuda or cuda:N, "
                "comma-separated (e.g. cuda:0,cuda:1)"
            )
    return items


# (flag, field, type, help) for every serve option; the env var is PREDICTOR_<FIELD>.
_Option = tuple[str, str, Callable[[str], Any], str]
SERVE_OPTIONS: tuple[_Option, ...] = (
    ("--model-dir", "model_dir", Path, "a model directory, or a folder of them"),
    ("--model-name", "model_name", str, "served name when a single model is found"),
    ("--host", "host", str, "address to listen on"),
    ("--http-port", "http_port", int, "HTTP port (KServe v1/v2 REST, /metrics)"),
    ("--grpc-port", "grpc_port", int, "gRPC port (KServe v2 gRPC)"),
    ("--enable-grpc", "enable_grpc", _bool, "serve gRPC too (true/false)"),
    ("--max-batch-size", "max_batch_size", int, "largest batch sent to a device"),
    ("--max-batch-delay-ms", "max_batch_delay_ms", float, "longest wait for a batch to fill"),
    (
        "--tune-batch-size",
        "tune_batch_size",
        _bool,
        "batch up to the smallest size within 3%% of the best images/s measured at warm-up "
        "(true/false)",
    ),
    ("--queue-capacity", "queue_capacity", int, "images admitted but not running, per model"),
    ("--devices", "devices", str, "auto, or a list such as cuda:0,cuda:1 or cpu,cpu"),
    ("--dtype", "dtype", str, "auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16"),
    (
        "--jit",
        "jit",
        str,
        "trace: run the whole forward as a TorchScript trace (checked against eager at start, "
        "eager if it differs); off: eager PyTorch",
    ),
    ("--max-body-bytes", "max_body_bytes", int, "largest request body accepted (413 above)"),
    ("--max-image-pixels", "max_image_pixels", int, "largest image accepted (413 above)"),
    ("--request-timeout-ms", "request_timeout_ms", int, "deadline of a request (504 after)"),
    ("--drain-timeout-s", "drain_timeout_s", float, "longest drain after SIGTERM"),
    (
        "--auth-token-file",
        "auth_token_file",
        Path,
        "file holding a bearer token; auth is on when set",
    ),
    ("--decode-workers", "decode_workers", int, "image decode threads (0: one per core)"),
    (
        "--max-consecutive-failures",
        "max_consecutive_failures",
        int,
        "engine failures in a row before the model reports unhealthy (0: never)",
    ),
    ("--log-level", "log_level", str.upper, "DEBUG, INFO, WARNING or ERROR"),
    (
        "--model-control",
        "model_control",
        str,
        "none: the models loaded at start are fixed, /v2/repository routes are not served; "
        "explicit: load, unload and reconfigure models at runtime through the repository API",
    ),
    (
        "--load-models",
        "load_models",
        str,
        "models loaded at start: all, none (needs --model-control explicit) or NAME,NAME",
    ),
    ("--docs", "docs", _bool, "serve the OpenAPI page at /docs and /openapi.json (true/false)"),
)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"PREDICTOR_{field.upper()}"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every serve option to ``parser`` (defaults resolved later, see ``settings_from``)."""
    defaults = Settings.__dataclass_fields__
    for flag, field, convert, help_text in SERVE_OPTIONS:
        default = defaults[field].default
        if convert is _bool:
            metavar = "BOOL"
        else:
            metavar = "DIR" if field == "model_dir" else field.split("_")[-1].upper()
        parser.add_argument(
            flag,
            dest=field,
            default=None,
            metavar=metavar,
            help=f"{help_text} [env {env_name(field)}; default {default}]",
        )


def settings_from(
    args: argparse.Namespace | Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve flags, then env vars, then defaults, convert and validate.

    Args:
        args: parsed flags (values are raw strings, None when absent).
        environ: environment to read ``PREDICTOR_*`` from; ``os.environ`` by default.

    Returns:
        The validated settings.

    Raises:
        SettingsError: a value does not convert or fails validation.
    """
    env = os.environ if environ is None else environ
    raw = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values: dict[str, Any] = {}
    for flag, field, convert, _help in SERVE_OPTIONS:
        text = raw.get(field)
        source = flag
        if text is None and env_name(field) in env:
            text, source = env[env_name(field)], env_name(field)
        if text is None or (isinstance(text, str) and text == "" and source != flag):
            continue
        try:
            values[field] = convert(text) if isinstance(text, str) else text
        except ValueError as exc:
            raise SettingsError(f"{source}: invalid value {text!r} ({exc})") from None
    return Settings(**values)


def known_fields() -> Sequence[str]:
    """Names of all settings fields (used by docs and tests)."""
    return [f.name for f in fields(Settings)]

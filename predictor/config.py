"""Server settings: one frozen dataclass, filled from CLI flags and ``PREDICTOR_*`` env vars.

Each setting is declared once, as a field of :class:`Settings` whose metadata carries its
help text and parser: the flag (``--max-batch-delay-ms``), the environment variable
(``PREDICTOR_MAX_BATCH_DELAY_MS``) and ``--help`` all come from that one declaration.
Precedence is flag, then environment variable, then default. Every value is validated
eagerly, cross-checks included, and a bad value is reported as one clear line that names
the flag and the environment variable. Paths are checked in ``main()``
(:func:`check_paths`), not when settings are built.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from predictor.cpus import available_cpus

DTYPES = ("auto", "float32", "float16", "bfloat16")
JIT_MODES = ("trace", "off")
MODEL_CONTROL_MODES = ("none", "explicit")
_MODEL_LIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(,[A-Za-z0-9][A-Za-z0-9_.-]{0,62})*$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting is invalid; the message names the flag and says what is allowed."""


def _option(
    default: Any, help_text: str, parse: Callable[[str], Any] = str, metavar: str = ""
) -> Any:
    """A setting: its default, its ``--help`` text and how its text is parsed."""
    return field(default=default, metadata={"help": help_text, "parse": parse, "metavar": metavar})


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) as a setting's value."""
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

    model_dir: Path = _option(
        Path("models"), "a model directory, or a folder of them", Path, metavar="DIR"
    )
    model_name: str | None = _option(None, "served name when a single model is found")
    host: str = _option("0.0.0.0", "address to listen on")  # noqa: S104 - a pod listens on all
    http_port: int = _option(8080, "HTTP port (KServe v1/v2 REST, /metrics)", int)
    grpc_port: int = _option(8081, "gRPC port (KServe v2 gRPC)", int)
    enable_grpc: bool = _option(True, "serve gRPC too (true/false)", parse_bool)
    max_batch_size: int = _option(32, "largest batch sent to a device", int)
    max_batch_delay_ms: float = _option(5.0, "longest wait for a batch to fill", float)
    tune_batch_size: bool = _option(
        True,
        "batch up to the smallest size within 3%% of the best images/s measured at warm-up "
        "(true/false)",
        parse_bool,
    )
    queue_capacity: int = _option(256, "images admitted but not running, per model", int)
    devices: str = _option("auto", "auto, or a list such as cuda:0,cuda:1 or cpu,cpu")
    dtype: str = _option(
        "auto", "auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16"
    )
    jit: str = _option(
        "trace",
        "trace: run the whole forward as a TorchScript trace (checked against eager at start, "
        "eager if it differs); off: eager PyTorch",
    )
    max_body_bytes: int = _option(32 * MIB, "largest request body accepted (413 above)", int)
    max_image_pixels: int = _option(40_000_000, "largest image accepted (413 above)", int)
    request_timeout_ms: int = _option(30_000, "deadline of a request (504 after)", int)
    drain_timeout_s: float = _option(25.0, "longest drain after SIGTERM", float)
    auth_token_file: Path | None = _option(
        None, "file holding a bearer token; auth is on when set", Path
    )
    decode_workers: int = _option(0, "image decode threads (0: one per core)", int)
    max_consecutive_failures: int = _option(
        5, "engine failures in a row before the model reports unhealthy (0: never)", int
    )
    log_level: str = _option("INFO", "DEBUG, INFO, WARNING or ERROR", str.upper)
    model_control: str = _option(
        "none",
        "none: the models loaded at start are fixed, /v2/repository routes are not served; "
        "explicit: load, unload and reconfigure models at runtime through the repository API",
    )
    load_models: str = _option(
        "all", "models loaded at start: all, none (needs --model-control explicit) or NAME,NAME"
    )
    docs: bool = _option(True, "serve the OpenAPI page at /docs and /openapi.json", parse_bool)
    header_timeout_s: float = _option(
        20.0, "a request's line and headers must arrive within this (408, closed)", float
    )
    body_timeout_s: float = _option(
        20.0, "longest wait for more of a request body (408, closed)", float
    )
    keep_alive_timeout_s: float = _option(
        65.0, "an idle keep-alive connection is closed after this", float
    )
    max_header_bytes: int = _option(
        65536, "largest request line plus headers accepted (431 above)", int, metavar="BYTES"
    )
    max_headers: int = _option(100, "most request headers accepted (431 above)", int)
    max_connections: int = _option(
        1000, "open HTTP connections per process; a further one gets 503 and is closed", int
    )
    max_inflight_bytes: int = _option(
        0,
        "bytes of request bodies and decoded pixels in flight (503 above; 0: half of what the "
        "container memory limit leaves after the models load, 2 GiB without a limit)",
        int,
        metavar="BYTES",
    )
    grpc_max_concurrent_streams: int = _option(
        256, "concurrent RPCs per gRPC connection", int, metavar="STREAMS"
    )

    def __post_init__(self) -> None:
        """Validate every field and the cross-field rules."""
        check(1 <= self.http_port <= 65535, "--http-port must be in 1..65535")
        check(1 <= self.grpc_port <= 65535, "--grpc-port must be in 1..65535")
        check(
            not self.enable_grpc or self.http_port != self.grpc_port,
            f"--http-port and --grpc-port must differ (both {self.http_port})",
        )
        check(1 <= self.max_batch_size <= 4096, "--max-batch-size must be in 1..4096")
        check(
            0 <= self.max_batch_delay_ms <= 10_000,
            f"--max-batch-delay-ms must be in 0..10000 (got {self.max_batch_delay_ms:g})",
        )
        check(
            self.queue_capacity >= self.max_batch_size,
            f"--queue-capacity ({self.queue_capacity}) must be >= --max-batch-size "
            f"({self.max_batch_size}), else a batch can never fill",
        )
        check(self.queue_capacity <= 1_000_000, "--queue-capacity must be <= 1000000")
        _parse_devices(self.devices)  # syntax only; availability is checked at engine build
        check(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}")
        check(self.jit in JIT_MODES, f"--jit must be one of {', '.join(JIT_MODES)}")
        check(self.max_body_bytes >= 1024, "--max-body-bytes must be >= 1024")
        check(self.max_image_pixels >= 1, "--max-image-pixels must be >= 1")
        check(self.request_timeout_ms >= 1, "--request-timeout-ms must be >= 1")
        check(
            self.max_batch_delay_ms < self.request_timeout_ms,
            f"--max-batch-delay-ms ({self.max_batch_delay_ms:g}) must be below "
            f"--request-timeout-ms ({self.request_timeout_ms})",
        )
        check(self.drain_timeout_s >= 0, "--drain-timeout-s must be >= 0")
        check(self.decode_workers >= 0, "--decode-workers must be >= 0 (0: one per core)")
        check(
            self.max_consecutive_failures >= 0,
            "--max-consecutive-failures must be >= 0 (0: never mark unhealthy)",
        )
        check(self.log_level in LOG_LEVELS, f"--log-level must be one of {LOG_LEVELS}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            check(0 < getattr(self, name) <= 3600, f"{flag_name(name)} must be in (0, 3600]")
        check(self.max_header_bytes >= 1024, "--max-header-bytes must be >= 1024")
        check(self.max_headers >= 8, "--max-headers must be >= 8")
        check(self.max_connections >= 1, "--max-connections must be >= 1")
        check(self.max_inflight_bytes >= 0, "--max-inflight-bytes must be >= 0 (0: auto)")
        check(
            self.max_inflight_bytes == 0 or self.max_inflight_bytes >= self.max_body_bytes,
            "--max-inflight-bytes must be at least --max-body-bytes, else the largest "
            "accepted body never fits",
        )
        check(self.grpc_max_concurrent_streams >= 1, "--grpc-max-concurrent-streams must be >= 1")
        check(
            self.model_control in MODEL_CONTROL_MODES,
            f"--model-control must be one of {', '.join(MODEL_CONTROL_MODES)}",
        )
        check(
            self.load_models in ("all", "none") or bool(_MODEL_LIST_RE.match(self.load_models)),
            "--load-models must be all, none or a comma-separated list of model names",
        )
        check(
            self.load_models != "none" or self.model_control == "explicit",
            "--load-models none serves nothing unless --model-control explicit lets models be "
            "loaded later",
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


def check(ok: bool, message: str) -> None:
    """Raise :class:`SettingsError` with ``message`` unless ``ok``."""
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


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"PREDICTOR_{field.upper()}"


def flag_name(field_name: str) -> str:
    """The CLI flag of a setting."""
    return "--" + field_name.replace("_", "-")


def known_fields() -> Sequence[str]:
    """Names of all settings fields (used by docs and tests)."""
    return [f.name for f in fields(Settings)]

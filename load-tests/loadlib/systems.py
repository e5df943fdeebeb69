"""The servers the bench compares, and how each one is started on 127.0.0.1.

Every system serves the same model directory with the same preprocessing
(:func:`predictor.tasks.classification.decode_image`) and the same torch module; what differs is the
serving: batching or not, event loop blocking or not, how decode work is spread.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

LOAD_TESTS = Path(__file__).resolve().parent.parent
PEERS = LOAD_TESTS / "peers"

#: Batch settings of every batching system (ours' defaults).
MAX_BATCH_SIZE = 32
MAX_BATCH_DELAY_MS = 5


@dataclass(frozen=True)
class ServerSettings:
    """Per-start settings: where to listen and what to run on."""

    model_dir: Path
    model: str
    http_port: int
    grpc_port: int
    device: str
    dtype: str


@dataclass(frozen=True)
class System:
    """A benchmarked server.

    Attributes:
        key: short name used on the command line and in results.
        label: name in tables and plots.
        description: one line for the docs.
        protocol: the loadgen protocol it is driven with.
        batching: whether it batches requests onto the model.
        requires: a module that must be importable (optional peers), else skipped.
    """

    key: str
    label: str
    description: str
    protocol: str = "v1"
    batching: bool = False
    requires: str | None = None

    def available(self) -> bool:
        """Whether its optional dependency is installed."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def command(self, s: ServerSettings) -> list[str]:
        """The command line that starts it."""
        python = sys.executable
        common = ["--model-dir", str(s.model_dir), "--device", s.device, "--dtype", s.dtype]
        if self.key in ("ours", "ours-nobatch"):
            batch = MAX_BATCH_SIZE if self.key == "ours" else 1
            return [
                python, "-m", "predictor", "serve",
                "--model-dir", str(s.model_dir),
                "--host", "127.0.0.1",
                "--http-port", str(s.http_port),
                "--grpc-port", str(s.grpc_port),
                "--devices", s.device,
                "--dtype", s.dtype,
                "--max-batch-size", str(batch),
                "--max-batch-delay-ms", str(MAX_BATCH_DELAY_MS),
                "--log-level", "WARNING",
            ]  # fmt: skip
        if self.key == "kserve-plain":
            return [
                python, str(PEERS / "kserve_plain.py"), *common,
                "--http_port", str(s.http_port), "--grpc_port", str(s.grpc_port),
            ]  # fmt: skip
        if self.key == "fastapi-naive":
            return [
                python, str(PEERS / "fastapi_naive.py"), *common,
                "--host", "127.0.0.1", "--port", str(s.http_port),
            ]  # fmt: skip
        if self.key == "mosec":
            return [
                python, str(PEERS / "mosec_server.py"), *common,
                "--max-batch-size", str(MAX_BATCH_SIZE),
                "--max-batch-delay-ms", str(MAX_BATCH_DELAY_MS),
                "--address", "127.0.0.1", "--port", str(s.http_port),
                "--timeout", "60000", "--log-level", "warning",
            ]  # fmt: skip
        if self.key == "litserve":
            return [
                python, str(PEERS / "litserve_server.py"), *common,
                "--max-batch-size", str(MAX_BATCH_SIZE),
                "--max-batch-delay-ms", str(MAX_BATCH_DELAY_MS),
                "--host", "127.0.0.1", "--port", str(s.http_port),
            ]  # fmt: skip
        raise ValueError(f"unknown system {self.key}")

    def ready_url(self, s: ServerSettings) -> str:
        """A URL that answers 200 once the model can serve."""
        base = f"http://127.0.0.1:{s.http_port}"
        if self.key in ("ours", "ours-nobatch", "kserve-plain"):
            return f"{base}/v2/models/{s.model}/ready"
        if self.key == "mosec":
            return f"{base}/"
        return f"{base}/health"


SYSTEMS: dict[str, System] = {
    s.key: s
    for s in (
        System(
            "ours",
            "ours (batching)",
            "gpu-predictor, dynamic batching (max batch 32, 5 ms window)",
            batching=True,
        ),
        System("ours-nobatch", "ours, batching off", "gpu-predictor --max-batch-size 1"),
        System(
            "kserve-plain",
            "KServe plain",
            "a kserve.Model with a sync predict, as in KServe's docs; no batching",
        ),
        System(
            "fastapi-naive",
            "FastAPI naive",
            "FastAPI + PyTorch, model called inline per request; no batching",
        ),
        System(
            "mosec",
            "mosec",
            "mosec: Rust front end, decode worker processes, dynamic batching (32, 5 ms)",
            batching=True,
            requires="mosec",
        ),
        System(
            "litserve",
            "LitServe",
            "LitServe: batching (32, 5 ms), one inference worker; v1 JSON (no raw-body route)",
            protocol="v1-json",
            batching=True,
            requires="litserve",
        ),
    )
}

"""Shared test helpers: a real predictor process on loopback, metrics, and image builders."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
SERVE_WITH_TEST_ARCHS = ROOT / "tests" / "fixtures" / "serve.py"
DIGITS = ROOT / "models" / "digits"


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PredictorProcess:
    """``gpu-predictor serve`` as a subprocess on 127.0.0.1 with free ports.

    Args:
        args: extra serve flags (``--model-dir`` included).
        log_path: where the server's output goes.
        env: extra environment variables.
        test_archs: start through ``tests/fixtures/serve.py`` (test-only architectures).
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        test_archs: bool = False,
    ) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path
        entry = [str(SERVE_WITH_TEST_ARCHS)] if test_archs else ["-m", "predictor"]
        command = [
            sys.executable,
            *entry,
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            *args,
        ]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
        )

    def wait_ready(self, models: Sequence[str], timeout_s: float = 180.0) -> None:
        """Block until every model answers ready (the server exits: fail with its log)."""
        deadline = time.monotonic() + timeout_s
        pending = list(models)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"models {pending} not ready:\n{self.log()}")
                try:
                    ready = client.get(f"{self.url}/v2/models/{pending[0]}/ready")
                    if ready.status_code == 200:
                        pending.pop(0)
                        continue
                except httpx.TransportError:
                    pass
                time.sleep(0.2)

    def log(self) -> str:
        """The server's output so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics`` keyed by ``(name, sorted labels)``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return parse_metrics(text)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the server."""
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for exit (kill after ``timeout_s``); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition to ``{(name, sorted label pairs): value}``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= set(lbl))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode a Pillow image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB test image (gradients plus noise) of the given size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 100 * np.sin(x / (width / 6.0) + seed)
    g = 127 + 100 * np.cos(y / (height / 5.0) - seed)
    b = 127 + 80 * np.sin((x + y) / (width / 4.0))
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(np.stack([r, g, b], axis=-1) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def digit_samples() -> dict[int, bytes]:
    """The demo model's sample PNGs by true digit."""
    return {
        int(p.stem.split("-")[1]): p.read_bytes()
        for p in sorted((DIGITS / "samples").glob("*.png"))
    }


def console_examples(markdown: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` of every ``$ command`` in ``console`` blocks."""
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", markdown, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            elif examples and line:
                examples[-1][1].append(line)
    return examples


def _normalise(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: "<uuid>" if k == "id" else _normalise(v) for k, v in value.items()}
    return value


def same_output(actual: str, expected: str) -> bool:
    """JSON compared with floats rounded to 3 places and any ``id`` matching; else text."""
    try:
        return bool(_normalise(json.loads(actual)) == _normalise(json.loads(expected)))
    except json.JSONDecodeError:
        return actual.strip() == expected.strip()

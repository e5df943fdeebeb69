"""Session fixtures: real predictor processes on loopback, shared where tests allow.

Starting a server costs ~15-20 s here (kserve + torch imports), so one ``digits_server``
serves every test that only reads; tests that kill, drain or overload a server start their
own with ``start_server``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from predictor.tasks import images
from tests.fixtures.test_archs import write_model
from tests.support import DIGITS, PredictorProcess

StartServer = Callable[..., PredictorProcess]


@pytest.fixture(scope="session", autouse=True)
def _pillow_as_the_server_sets_it() -> None:
    """Decode in tests as the server does: ``--max-image-pixels`` is the only pixel limit."""
    images.lift_pillow_bomb_guard()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Start predictor processes on demand; all are stopped at the end of the session."""
    started: list[PredictorProcess] = []

    def start(
        args: Sequence[str],
        models: Sequence[str],
        env: dict[str, str] | None = None,
        test_archs: bool = False,
    ) -> PredictorProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = PredictorProcess(args, log, env=env, test_archs=test_archs)
        started.append(server)
        server.wait_ready(models)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of models: the digits demo plus the test-only slow and poison models."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(DIGITS, folder / "digits", ignore=shutil.ignore_patterns("samples", "*.py"))
    write_model(folder / "slow", "slow_net", delay_ms=50)
    write_model(folder / "poison", "poison_net", delay_ms=20)
    return folder


@pytest.fixture(scope="session")
def demo_server(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> PredictorProcess:
    """What ``make serve`` serves (``models/``: digits and the shapes detector), plus ``coco``.

    ``coco`` is a torchvision detector written by ``gpu-predictor export --weights none``
    (random weights: it must serve; its answers mean nothing). Batches up to 16 with a
    100 ms window, so concurrent requests batch; runtime model control is on.
    """
    folder = tmp_path_factory.mktemp("demo")
    for name in ("digits", "shapes"):
        ignore = shutil.ignore_patterns("samples", "*.py")
        shutil.copytree(DIGITS.parent / name, folder / name, ignore=ignore)
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "export",
            "fasterrcnn_mobilenet_v3_large_320_fpn",
            "--weights",
            "none",
            "--output",
            str(folder / "coco"),
            "--max-detections",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr
    args = [
        "--model-dir",
        str(folder),
        "--max-batch-size",
        "16",
        "--max-batch-delay-ms",
        "100",
        "--tune-batch-size",
        "false",
        "--model-control",
        "explicit",
    ]
    return start_server(args, ["digits", "shapes", "coco"])


@pytest.fixture(scope="session")
def digits_server(start_server: StartServer) -> PredictorProcess:
    """The demo model served with default settings (plus a 20 ms batch window)."""
    return start_server(["--model-dir", str(DIGITS), "--max-batch-delay-ms", "20"], ["digits"])

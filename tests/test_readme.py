"""The README's examples are executed against a live server and their outputs compared.

Every ``$ command`` line of a ``console`` block in README.md runs (``localhost:8080`` pointing
at the test server, ``uv run python`` as this interpreter, the gRPC example aimed at the test
server's gRPC port); the lines after it are the expected output. JSON is compared with
floats rounded to three places and ``"<uuid>"`` matching any id.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT, PredictorProcess, console_examples, same_output

README = (ROOT / "README.md").read_text()


EXAMPLES = console_examples(README)


def test_readme_has_an_example_for_every_route() -> None:
    commands = " ".join(command for command, _ in EXAMPLES)
    for route in (":predict", ":annotate", "/infer", "grpc_client.py", "/ready", "/metrics"):
        assert route in commands


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c[:60] for c, _ in EXAMPLES])
def test_readme_example(demo_server: PredictorProcess, command: str, expected: list[str]) -> None:
    local = command.replace("localhost:8080", f"127.0.0.1:{demo_server.http_port}")
    local = local.replace("uv run python", sys.executable)
    if "grpc_client.py" in local:
        local += f" --target {demo_server.grpc_target}"
    result = subprocess.run(
        ["bash", "-c", local], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(expected), result.stdout
    for actual, wanted in zip(lines, expected, strict=True):
        assert same_output(actual, wanted), f"\nactual:   {actual}\nexpected: {wanted}"

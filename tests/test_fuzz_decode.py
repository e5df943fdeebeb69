"""A bounded, coverage-guided fuzz run of the decode path (atheris / libFuzzer).

``tests/fuzz/fuzz_decode.py`` feeds mutated request bodies through ``codec.decode_request``
and ``preprocess.decode_image``, starting from the checked-in seed corpus
(``tests/fuzz/seeds/``, rebuilt by ``tests/fuzz/make_seeds.py``). libFuzzer treats anything
but a 4xx error, a hang or memory growth as a crash and exits non-zero.

The budget is a fixed number of runs with a fixed seed (``-runs``, ``-seed``), capped in time
(``-max_total_time``); ``PREDICTOR_FUZZ_RUNS`` / ``PREDICTOR_FUZZ_MAX_S`` raise both for a
longer local search. ``pytest -s`` shows how many cases ran.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictor.edge import protocols as codec
from predictor.store.spec import InputSpec
from predictor.tasks import classification as preprocess
from tests.support import ROOT

FUZZ = ROOT / "tests" / "fuzz"
HARNESS = FUZZ / "fuzz_decode.py"
SEEDS = FUZZ / "seeds"
RUNS = int(os.environ.get("PREDICTOR_FUZZ_RUNS", "500000"))
MAX_S = int(os.environ.get("PREDICTOR_FUZZ_MAX_S", "90"))
needs_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is installed on Linux x86_64 only (its only wheels)",
)


def fuzz(corpus: list[Path], artifacts: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run the harness under libFuzzer; its combined output is in ``stdout``."""
    command = [
        # Through a small shell that forks: a process exec'd straight from pytest inherits
        # pytest's peak RSS (ru_maxrss survives fork + exec), which libFuzzer would count
        # against -rss_limit_mb.
        "/bin/sh",
        "-c",
        '"$@"; exit $?',
        "fuzz",
        sys.executable,
        str(HARNESS),
        "-seed=1",
        "-timeout=30",  # one input hanging this long is a crash
        "-rss_limit_mb=1024",  # memory growth past this is a crash
        f"-artifact_prefix={artifacts}/",
        f"-dict={FUZZ / 'decode.dict'}",
        "-print_final_stats=1",
        *flags,
        *map(str, corpus),
    ]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=MAX_S + 120,
        check=False,
    )


def test_seed_corpus_is_valid() -> None:
    """Every seed is a valid image or v1 body: mutations start from the real thing."""
    seeds = sorted(SEEDS.iterdir())
    suffixes = {p.suffix for p in seeds}
    assert {".jpg", ".png", ".webp", ".bmp", ".json"} <= suffixes
    spec = InputSpec("RGB", 36, (32, 28), (0.5,) * 3, (0.25,) * 3, 255)
    for path in seeds:
        data = path.read_bytes()
        assert len(data) < 4096, f"{path.name}: keep seeds small"
        payload: object = json.loads(data) if path.suffix == ".json" else data
        for image in codec.decode_request(payload).images:
            assert isinstance(image, bytes)
            pixels = preprocess.decode_image(image, spec, 1 << 20)
            assert pixels.shape == (32, 28, 3), path.name
            assert np.ptp(pixels) > 0, path.name


@pytest.mark.slow
@needs_atheris
def test_bounded_fuzz_run_of_the_decode_path(tmp_path: Path) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    result = fuzz([corpus, SEEDS], artifacts, f"-runs={RUNS}", f"-max_total_time={MAX_S}")
    (tmp_path / "fuzz.log").write_text(result.stdout, encoding="utf-8")
    crashes = sorted(p.name for p in artifacts.iterdir())
    tail = result.stdout[-6000:]
    assert result.returncode == 0, f"fuzzing found a crash: {crashes}\n{tail}"
    assert not crashes, tail
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stdout)
    assert done, tail
    runs, seconds = int(done.group(1)), int(done.group(2))
    assert runs >= len(list(SEEDS.iterdir())), "every seed runs at least once"
    new_units = re.search(r"stat::new_units_added:\s+(\d+)", result.stdout)
    peak = re.search(r"stat::peak_rss_mb:\s+(\d+)", result.stdout)
    print(
        f"\nfuzz decode path: {runs} cases in {seconds} s (budget {RUNS} runs / {MAX_S} s; "
        f"{new_units.group(1) if new_units else '?'} new coverage units; "
        f"peak RSS {peak.group(1) if peak else '?'} MB; log {tmp_path / 'fuzz.log'})"
    )


@needs_atheris
def test_a_crash_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness fails loudly: an input it must crash on gives a non-zero exit and an
    artifact (so a green fuzz run means no crash, not a broken harness)."""
    canary = tmp_path / "canary"
    canary.write_bytes(b"canary-input")
    monkeypatch.setenv("FUZZ_DECODE_CANARY", "canary-input")
    result = fuzz([canary], tmp_path)
    assert result.returncode != 0
    assert "RuntimeError: canary input reached the harness" in result.stdout

"""atheris (libFuzzer) harness for the decode path: request body -> codec -> image decode.

Every input is treated as a request body as KServe hands it to the model: JSON when it
starts with ``{`` (the v1 ``instances`` route), raw image bytes otherwise. Anything but the
project's 4xx errors escaping, a hang (``-timeout``) or memory growth (``-rss_limit_mb``)
is a crash: libFuzzer stops, writes the input to ``-artifact_prefix`` and exits non-zero.

Run::

    uv run python tests/fuzz/fuzz_decode.py -runs=20000 -max_total_time=90 \\
        -dict=tests/fuzz/decode.dict /tmp/new-corpus tests/fuzz/seeds
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["PIL", "predictor"]):
    import orjson
    from PIL import Image  # noqa: F401  (instrumented: its plugins parse the headers)

    from predictor.edge import protocols as codec
    from predictor.errors import BadInput, TooLarge
    from predictor.store.spec import InputSpec
    from predictor.tasks import classification as preprocess
    from predictor.tasks import images

#: The digits model (grayscale 32x32) and an RGB model with a non-square crop.
SPECS = (
    InputSpec("L", 32, (32, 32), (0.25,), (0.35,), 0),
    InputSpec("RGB", 36, (32, 28), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 255),
)
#: Small, so that mutated headers announcing big images stay cheap to try.
MAX_PIXELS = 1 << 20
#: An input that must crash the harness: proves a failure is reported (tests only).
CANARY = os.environ.get("FUZZ_DECODE_CANARY", "").encode()


def test_one_input(data: bytes) -> None:
    """One fuzz case: must end in a result or a one-line BadInput/TooLarge."""
    if CANARY and data == CANARY:
        raise RuntimeError("canary input reached the harness")
    spec = SPECS[len(data) % 2]
    try:
        payload: object = data
        if data[:1] == b"{":
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                return  # the edge answers 400 before the model sees it
        request = codec.decode_request(payload)
        for image in request.images:
            if isinstance(image, bytes):
                pixels = preprocess.decode_image(image, spec, MAX_PIXELS)
                if pixels.shape != (*spec.crop, spec.channels) or pixels.dtype.name != "uint8":
                    raise AssertionError(f"decoded to {pixels.shape} {pixels.dtype}")
    except (BadInput, TooLarge) as exc:
        if not 400 <= exc.status < 500 or "\n" in exc.message or len(exc.message) > 300:
            raise AssertionError(f"bad error message: {exc.message[:80]!r}") from None


def main() -> None:
    """Start libFuzzer with the command-line flags (Pillow set up as the server sets it)."""
    images.lift_pillow_bomb_guard()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

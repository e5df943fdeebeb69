"""Write the fuzz seed corpus: ``uv run python tests/fuzz/make_seeds.py``.

The seeds are small valid images of every supported format and mode plus a few v1 JSON
bodies; they are checked in under ``tests/fuzz/seeds/`` so the fuzz run starts from the
same corpus on every machine (encoders differ slightly between library versions).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.corpus import valid_images

SEEDS = Path(__file__).resolve().parent / "seeds"


def seeds() -> dict[str, bytes]:
    """Every seed by file name."""
    images = valid_images()
    b64 = base64.b64encode(images["png-L.png"]).decode()
    webp = base64.b64encode(images["webp-lossy-RGB.webp"]).decode()
    bodies = {
        "v1-b64.json": {"instances": [{"image_bytes": {"b64": b64}}], "parameters": {"top_k": 2}},
        "v1-bare.json": {"instances": [b64, {"b64": webp}]},
        "v1-urlsafe.json": {
            "instances": [{"b64": base64.urlsafe_b64encode(images["jpeg-L.jpg"]).decode()}],
            "parameters": {"timeout_ms": "250"},
        },
    }
    out = dict(images)
    out.update({name: json.dumps(body).encode() for name, body in bodies.items()})
    return out


def main() -> None:
    """(Re)write the seed directory."""
    SEEDS.mkdir(exist_ok=True)
    for old in SEEDS.iterdir():
        old.unlink()
    for name, data in sorted(seeds().items()):
        (SEEDS / name).write_bytes(data)
        print(f"{name:28s} {len(data):6d} bytes")


if __name__ == "__main__":
    main()

"""A plain KServe custom model, written the way KServe's docs show: no batching.

A ``kserve.Model`` subclass with ``load`` and a synchronous ``predict`` that decodes the
image and runs the torch module on it, started with ``kserve.ModelServer().start([model])``
and KServe's defaults (one uvicorn worker; a sync ``predict`` runs on the event loop). The
decode and the module are the same as ours (:class:`loadlib.workload.PerRequestClassifier`).

    python load-tests/peers/kserve_plain.py --model-dir DIR --http_port 8080 --grpc_port 8081

KServe's own flags (``--http_port``, ``--grpc_port``...) are parsed by KServe; it listens on
0.0.0.0 (fixed in KServe 0.21).
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kserve
from loadlib.workload import PerRequestClassifier


class ImageClassifier(kserve.Model):  # type: ignore[misc]
    """An image classifier: one request, one image, one forward pass."""

    def __init__(self, name: str, model_dir: Path, device: str, dtype: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.device = device
        self.dtype = dtype
        self.classifier: PerRequestClassifier | None = None
        self.load()

    def load(self) -> bool:
        """Load the module once."""
        self.classifier = PerRequestClassifier(self.model_dir, self.device, self.dtype)
        self.ready = True
        return True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """A raw image body (``bytes``) or ``{"instances": [{"image_bytes": {"b64"}}]}``."""
        assert self.classifier is not None
        if isinstance(payload, bytes | bytearray):
            images = [bytes(payload)]
        else:
            images = [base64.b64decode(i["image_bytes"]["b64"]) for i in payload["instances"]]
        return self.classifier.predict(images)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    args, _ = parser.parse_known_args()
    model = ImageClassifier(args.model_dir.resolve().name, args.model_dir, args.device, args.dtype)
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()

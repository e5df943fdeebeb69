"""LitServe serving the same model with its own batching.

A ``LitAPI`` with ``max_batch_size`` and ``batch_timeout`` (the same as ours) whose
``predict`` runs the same :class:`predictor.runtime.engine.Engine`; ``decode_request`` runs the
predictor's ``decode_image``. LitServe has no raw-body route (JSON or multipart forms only),
so it takes ours v1 JSON: ``{"instances": [{"image_bytes": {"b64": ...}}]}`` (one image)
at ``POST /v1/models/<name>:predict``. LitServe's defaults otherwise: one inference worker
per device, which also runs ``decode_request``.

    python load-tests/peers/litserve_server.py --model-dir DIR --port 8000
"""

# No `from __future__ import annotations`: LitServe compares decode_request's annotation
# with fastapi.Request at run time.

import argparse
import base64
import sys
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import litserve as ls
import numpy as np
from fastapi import Request
from loadlib.workload import MAX_PIXELS, predictions


class ImageAPI(ls.LitAPI):  # type: ignore[misc]
    """Decode per request, batch, run the engine, answer top-k per image."""

    def __init__(
        self, model_dir: Path, dtype: str, max_batch_size: int, batch_timeout_s: float
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout_s,
            api_path=f"/v1/models/{model_dir.resolve().name}:predict",
        )
        self.model_dir = model_dir
        self.dtype = dtype
        self.max_batch = max_batch_size

    def setup(self, device: str) -> None:
        """Load the module onto ``device`` and warm the engine up."""
        from predictor.store.manifest import discover
        from predictor.store.weights import load_module
        from predictor.tasks.registry import engine_for

        self.spec = discover(self.model_dir)[0]
        module = load_module(self.spec)
        self.engine = engine_for(self.spec, module, device, self.dtype, self.max_batch)
        self.engine.warmup()

    def decode_request(self, request: Request) -> np.ndarray:
        """``{"instances": [{"image_bytes": {"b64"}}]}`` (one image) to input pixels.

        LitServe reads the annotation at run time: ``Request`` makes it hand over the
        parsed JSON body (not the request).
        """
        from predictor.tasks.classification import decode_image

        body = cast(dict[str, Any], request)
        data = base64.b64decode(body["instances"][0]["image_bytes"]["b64"])
        return decode_image(data, self.spec.input, MAX_PIXELS)

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Keep the batch a list: the engine stacks it into its own buffer."""
        return inputs

    def predict(self, x: list[np.ndarray]) -> np.ndarray:
        """One batch through the engine."""
        return np.stack(self.engine.run(list(x)))

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        """One probability row per request."""
        return [output[i : i + 1] for i in range(output.shape[0])]

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        """The v1 answer for one image."""
        return predictions(output, self.spec.labels, self.spec.top_k)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = ImageAPI(args.model_dir, args.dtype, args.max_batch_size, args.max_batch_delay_ms / 1000)
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, timeout=30)
    server.run(host=args.host, port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()

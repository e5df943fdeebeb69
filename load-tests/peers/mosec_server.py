r"""mosec serving the same model with its own dynamic batching: the strongest Python peer.

mosec's Rust front end takes the HTTP request; a pool of ``Preprocess`` worker processes
decodes images (the predictor's ``decode_image``, one process per core by default); one
``Inference`` process batches them (same batch size and window as ours) and runs the same
:class:`predictor.runtime.engine.Engine` (same normalisation, dtype and layout as ours). The route
is ours: ``POST /v1/models/<name>:predict`` with a raw image body.

    python load-tests/peers/mosec_server.py --model-dir DIR --address 127.0.0.1 \
        --port 8000 --timeout 30000

mosec's own flags (``--address``, ``--port``, ``--timeout``...) are parsed by mosec; the
model settings travel to the worker processes in ``MOSEC_PEER_*`` environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from loadlib.workload import MAX_PIXELS, predictions
from mosec import Server, Worker


def _model_dir() -> Path:
    return Path(os.environ["MOSEC_PEER_MODEL_DIR"])


class Preprocess(Worker):
    """Raw image bytes to the model's ``uint8`` input pixels."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from predictor.store.manifest import discover

        self.spec = discover(_model_dir())[0]

    def deserialize(self, data: bytes) -> bytes:
        """The request body is the image itself."""
        return data

    def forward(self, data: bytes) -> np.ndarray:
        """Decode, resize and crop one image."""
        from predictor.tasks.classification import decode_image

        return decode_image(data, self.spec.input, MAX_PIXELS)


class Inference(Worker):
    """Batches of decoded images through the predictor's engine; top-k per image."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from predictor.store.manifest import discover
        from predictor.store.weights import load_module
        from predictor.tasks.registry import engine_for

        self.spec = discover(_model_dir())[0]
        max_batch = int(os.environ["MOSEC_PEER_MAX_BATCH_SIZE"])
        self.engine = engine_for(
            self.spec,
            load_module(self.spec),
            os.environ["MOSEC_PEER_DEVICE"],
            os.environ["MOSEC_PEER_DTYPE"],
            max_batch,
        )
        self.engine.warmup()

    def forward(self, data: list[np.ndarray]) -> list[dict[str, Any]]:
        """One batch; one answer per image, in order."""
        rows = np.stack(self.engine.run(list(data)))
        return [
            predictions(rows[i : i + 1], self.spec.labels, self.spec.top_k)
            for i in range(len(data))
        ]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay-ms", type=int, default=5)
    parser.add_argument("--decode-workers", type=int, default=0, help="0: one per core")
    args, rest = parser.parse_known_args()
    sys.argv = [sys.argv[0], *rest]  # mosec parses its own flags from sys.argv
    os.environ["MOSEC_PEER_MODEL_DIR"] = str(args.model_dir.resolve())
    os.environ["MOSEC_PEER_DEVICE"] = args.device
    os.environ["MOSEC_PEER_DTYPE"] = args.dtype
    os.environ["MOSEC_PEER_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    route = f"/v1/models/{args.model_dir.resolve().name}:predict"
    decoders = args.decode_workers or len(os.sched_getaffinity(0))
    server = Server()  # type: ignore[no-untyped-call]
    server.append_worker(Preprocess, num=decoders, route=route)
    server.append_worker(
        Inference,
        num=1,
        max_batch_size=args.max_batch_size,
        max_wait_time=args.max_batch_delay_ms,
        route=route,
    )
    server.run()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()

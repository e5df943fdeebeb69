"""The classic naive baseline: FastAPI + PyTorch, one image per request, no batching.

An ``async def`` route reads the body and runs decode and the model inline (blocking the
event loop while it computes), served by one uvicorn worker with its defaults: the way most
tutorials write it. The decode and the module are the same as ours
(:class:`loadlib.workload.PerRequestClassifier`).

    python load-tests/peers/fastapi_naive.py --model-dir DIR --port 8000
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from fastapi import FastAPI, Request
from loadlib.workload import PerRequestClassifier


def build_app(classifier: PerRequestClassifier) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            instances = json.loads(body)["instances"]
            images = [base64.b64decode(i["image_bytes"]["b64"]) for i in instances]
        else:
            images = [body]
        return classifier.predict(images)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = build_app(PerRequestClassifier(args.model_dir, args.device, args.dtype))
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()

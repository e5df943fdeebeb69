"""Classify images over KServe v2 gRPC, sending them as raw BYTES (the zero-copy route).

    uv run python examples/grpc_client.py models/digits/samples/digit-3.png --top-k 2

Prints one JSON line per image: {"image": ..., "labels": [...], "scores": [...]}.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import grpc
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--target", default="localhost:8081", help="host:port of the gRPC server")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--top-k", type=int, default=0, help="0: the model's default")
    args = parser.parse_args()

    images = [path.read_bytes() for path in args.images]
    request = pb.ModelInferRequest(
        model_name=args.model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image", datatype="BYTES", shape=[len(images)]
            )
        ],
        # BYTES elements are each prefixed with their length (4 bytes, little-endian).
        raw_input_contents=[b"".join(struct.pack("<I", len(i)) + i for i in images)],
        parameters={"top_k": pb.InferParameter(int64_param=args.top_k)} if args.top_k else {},
    )
    with grpc.insecure_channel(args.target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True))
    k = int(next(o.shape[1] for o in response.outputs if o.name == "labels"))
    labels, offset = [], 0
    while offset < len(raw["labels"]):
        (length,) = struct.unpack_from("<I", raw["labels"], offset)
        labels.append(raw["labels"][offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    scores = np.frombuffer(raw["scores"], dtype="<f4").reshape(-1, k)
    for i, path in enumerate(args.images):
        row = {
            "image": path.name,
            "labels": labels[i * k : (i + 1) * k],
            "scores": [round(float(s), 3) for s in scores[i]],
        }
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

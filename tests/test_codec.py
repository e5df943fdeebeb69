"""Protocols: every payload shape decodes to the same images; answers encode per protocol."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

from predictor.edge import protocols as codec
from predictor.edge import rest_v2
from predictor.edge.grpc_service import to_infer_response
from predictor.errors import BadInput
from predictor.store.manifest import read_manifest
from predictor.tasks.base import Tensor, V2Answer
from predictor.tasks.classification import Classification, top_k
from tests.support import DIGITS

IMG_A, IMG_B = b"\x89PNG fake a", b"\xff\xd8 fake b"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def grpc_request(
    values: list[bytes], parameters: dict[str, pb.InferParameter] | None = None
) -> InferRequest:
    raw = b"".join(struct.pack("<I", len(v)) + v for v in values)
    message = pb.ModelInferRequest(
        model_name="m",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image", datatype="BYTES", shape=[len(values)]
            )
        ],
        raw_input_contents=[raw],
        parameters=parameters or {},
    )
    return InferRequest.from_grpc(message)


def test_raw_body_is_one_v1_image() -> None:
    request = codec.decode_request(IMG_A)
    assert request.protocol == "v1"
    assert request.images == [IMG_A]


@pytest.mark.parametrize(
    "instance",
    [{"image_bytes": {"b64": b64(IMG_A)}}, {"b64": b64(IMG_A)}, b64(IMG_A)],
    ids=["image_bytes", "b64", "bare"],
)
def test_v1_instance_forms(instance: object) -> None:
    request = codec.decode_request({"instances": [instance, {"b64": b64(IMG_B)}]})
    assert request.images == [IMG_A, IMG_B]


def test_v1_parameters_and_header_deadline() -> None:
    body = {"instances": [b64(IMG_A)], "parameters": {"top_k": 3, "timeout_ms": 800}}
    request = codec.decode_request(body, {codec.TIMEOUT_HEADER: "500"})
    assert request.parameters == {"top_k": 3}
    assert request.timeout_ms == 500  # the shorter of header and parameter


def test_base64_with_line_breaks_and_urlsafe_alphabet() -> None:
    wrapped = "\n".join(b64(IMG_A * 20)[i : i + 76] for i in range(0, len(b64(IMG_A * 20)), 76))
    assert codec.decode_request({"instances": [wrapped]}).images == [IMG_A * 20]
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 5).decode()
    assert codec.decode_request({"instances": [urlsafe]}).images == [b"\xfb\xff\xfe" * 5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": []}, '"instances"'),
        ({"instances": "x"}, '"instances"'),
        ({"instances": [{"image_bytes": 3}]}, "instances[0]"),
        ({"instances": [b64(IMG_A), "***"]}, "instances[1] is not valid base64"),
        ({"instances": []}, "no images"),
        ({"instances": [b64(IMG_A)], "parameters": {"top_k": 0}}, "top_k"),
        ({"instances": [b64(IMG_A)], "parameters": {"top_k": True}}, "top_k"),
        ({"instances": [b64(IMG_A)], "parameters": []}, "parameters"),
    ],
)
def test_v1_errors_name_the_problem(body: dict[str, object], message: str) -> None:
    """The edge's errors, and the task's for its parameters (as the model checks them)."""
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")) as raised:
        TASK.check_parameters(codec.decode_request(body).parameters)
    assert raised.value.status == 400
    assert "\n" not in raised.value.message


def test_v2_rest_bytes_are_base64_strings() -> None:
    tensor = InferInput(name="image", shape=[2], datatype="BYTES", data=[b64(IMG_A), b64(IMG_B)])
    request = codec.decode_request(
        InferRequest("m", [tensor], request_id="r1", parameters={"top_k": 2})
    )
    assert request.protocol == "v2"
    assert request.images == [IMG_A, IMG_B]
    assert request.parameters == {"top_k": 2}
    assert request.request_id == "r1"


def test_v2_bytes_shape_n_by_1_and_count_mismatch() -> None:
    tensor = InferInput(
        name="image", shape=[2, 1], datatype="BYTES", data=[[b64(IMG_A)], [b64(IMG_B)]]
    )
    assert codec.decode_request(InferRequest("m", [tensor])).images == [IMG_A, IMG_B]
    short = InferInput(name="image", shape=[3], datatype="BYTES", data=[b64(IMG_A)])
    with pytest.raises(BadInput, match="1 elements but shape says 3"):
        codec.decode_request(InferRequest("m", [short]))


def test_grpc_raw_bytes_and_parameters() -> None:
    request = codec.decode_request(
        grpc_request([IMG_A, IMG_B], {"top_k": pb.InferParameter(int64_param=4)})
    )
    assert request.protocol == "grpc"
    assert request.images == [IMG_A, IMG_B]
    assert request.parameters == {"top_k": 4}
    assert request.binary_outputs


def test_fp32_tensor_from_json_and_raw() -> None:
    array = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nested = InferInput(name="tensor", shape=[2, 3, 4, 5], datatype="FP32", data=array.tolist())
    flat = InferInput(
        name="tensor", shape=[2, 3, 4, 5], datatype="FP32", data=array.ravel().tolist()
    )
    for tensor in (nested, flat):
        images = codec.decode_request(InferRequest("m", [tensor])).images
        assert len(images) == 2
        np.testing.assert_array_equal(np.stack(images), array)
    message = pb.ModelInferRequest(
        model_name="m",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="t", datatype="FP32", shape=[2, 3, 4, 5])
        ],
        raw_input_contents=[array.tobytes()],
    )
    images = codec.decode_request(InferRequest.from_grpc(message)).images
    np.testing.assert_array_equal(np.stack(images), array)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (InferInput(name="x", shape=[1, 3], datatype="INT32", data=[1, 2, 3]), "datatype INT32"),
        (
            InferInput(name="x", shape=[2, 2], datatype="FP32", data=[1.0, 2.0, 3.0, 4.0]),
            r"\[N, C, H, W\]",
        ),
        (
            InferInput(name="x", shape=[1, 1, 2, 2], datatype="FP32", data=[1.0, 2.0]),
            "does not hold 4 numbers",
        ),
        (
            InferInput(name="x", shape=[1, 1, 1, 2], datatype="FP32", data=[1.0, "a"]),
            "does not hold",
        ),
        (InferInput(name="x", shape=[3, 3], datatype="BYTES", data=["a"]), r"shape \[N\]"),
    ],
)
def test_v2_errors_name_the_problem(tensor: InferInput, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        codec.decode_request(InferRequest("m", [tensor]))


def test_v2_needs_exactly_one_input() -> None:
    tensor = InferInput(name="image", shape=[1], datatype="BYTES", data=[b64(IMG_A)])
    with pytest.raises(BadInput, match="exactly one input"):
        codec.decode_request(InferRequest("m", [tensor, tensor]))


TASK = Classification(read_manifest(DIGITS, "digits"))
OUTPUTS = TASK.outputs


def answer(results: list[Any], binary: bool = False) -> V2Answer:
    arrays = TASK.v2_outputs(results)
    outputs = [Tensor(name, *arrays[name], binary) for name in OUTPUTS]
    return V2Answer("m", "1", "abc", outputs)


def test_encode_v1_shape() -> None:
    results = [top_k(np.array([0.1, 0.7, 0.2], np.float32), ["a", "b", "c"], 2)]
    assert TASK.encode_v1(results) == {
        "predictions": [
            [
                {"label": "b", "score": pytest.approx(0.7), "class_id": 1},
                {"label": "c", "score": pytest.approx(0.2), "class_id": 2},
            ]
        ]
    }


def test_encode_v2_rest_and_grpc() -> None:
    results = [
        top_k(np.array([0.1, 0.7, 0.2], np.float32), ["a", "b", "c"], 2),
        top_k(np.array([0.5, 0.2, 0.3], np.float32), ["a", "b", "c"], 2),
    ]
    raw, headers = rest_v2.encode_answer(answer(results))
    assert headers == [(b"content-type", b"application/json")]
    body = json.loads(raw)
    assert body["id"] == "abc"
    assert body["model_version"] == "1"
    assert "parameters" not in body  # no nulls: the OIP schema wants an object or nothing
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["labels"] == {
        "name": "labels",
        "shape": [2, 2],
        "datatype": "BYTES",
        "data": ["b", "c", "a", "c"],
    }
    assert outputs["class_ids"]["data"] == [1, 2, 0, 2]
    assert outputs["scores"]["datatype"] == "FP32"

    message = to_infer_response(answer(results), binary=True).to_grpc()
    assert message.model_version == "1"
    decoded = InferResponse.from_grpc(message)
    labels = decoded.get_output_by_name("labels")
    scores = decoded.get_output_by_name("scores")
    assert labels is not None
    assert scores is not None
    assert labels.as_numpy().tolist() == [[b"b", b"c"], [b"a", b"c"]]
    np.testing.assert_allclose(scores.as_numpy(), [[0.7, 0.2], [0.5, 0.3]], rtol=1e-6)


def test_protocol_labels() -> None:
    assert codec.protocol_of(b"x") == "v1"
    assert codec.protocol_of({"instances": []}) == "v1"
    assert codec.protocol_of(InferRequest("m", [])) == "v2"
    assert codec.protocol_of(grpc_request([IMG_A])) == "grpc"


def _binary_body(header: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + tail, {rest_v2.HEADER_LENGTH: str(len(head))}


def test_rest_binary_extension_bytes_and_fp32_inputs() -> None:
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in (IMG_A, IMG_B))
    body, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "scores", "parameters": {"binary_data": True}},
                {"name": "labels"},
            ],
        },
        raw,
    )
    parsed = rest_v2.parse_request(body, headers, "m")
    request = codec.decode_request(parsed, headers, outputs=OUTPUTS)
    assert request.images == [IMG_A, IMG_B]
    assert request.requested_outputs == {"scores": True, "labels": None}

    tensor = np.arange(12, dtype="<f4").reshape(1, 3, 2, 2)
    body, headers = _binary_body(
        {
            "inputs": [
                {
                    "name": "tensor",
                    "datatype": "FP32",
                    "shape": [1, 3, 2, 2],
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
        },
        tensor.tobytes(),
    )
    request = codec.decode_request(rest_v2.parse_request(body, headers, "m"), headers)
    np.testing.assert_array_equal(request.images[0], tensor[0])


@pytest.mark.parametrize(
    ("header", "tail", "message"),
    [
        (
            {
                "inputs": [
                    {
                        "name": "i",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 9},
                    }
                ]
            },
            b"abc",
            "runs past",
        ),
        (
            {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["QQ=="]}]},
            b"extra",
            "no input declares",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "i",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [],
                        "parameters": {"binary_data_size": 0},
                    }
                ]
            },
            b"",
            "both",
        ),
        ({"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1]}]}, b"", "needs data"),
        ({"inputs": []}, b"", "non-empty"),
        (
            {
                "inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["QQ=="]}],
                "outputs": [{"name": "nope"}],
            },
            b"",
            "unknown output",
        ),
    ],
)
def test_rest_binary_extension_errors(header: dict[str, Any], tail: bytes, message: str) -> None:
    body, headers = _binary_body(header, tail)
    with pytest.raises(BadInput, match=message):
        codec.decode_request(rest_v2.parse_request(body, headers, "m"), headers, outputs=OUTPUTS)


def test_binary_outputs_follow_the_request() -> None:
    results = [top_k(np.array([0.1, 0.7, 0.2], np.float32), ["a", "bee", "c"], 2)]
    arrays = TASK.v2_outputs(results)
    outputs = [Tensor("labels", *arrays["labels"], True), Tensor("scores", *arrays["scores"])]
    raw, headers = rest_v2.encode_answer(V2Answer("m", "1", "x", outputs))
    length = int(dict(headers)[rest_v2.HEADER_LENGTH.encode()])
    head = json.loads(raw[:length])
    assert [o["name"] for o in head["outputs"]] == ["labels", "scores"]
    assert head["outputs"][0]["parameters"] == {"binary_data_size": len(raw) - length}
    assert head["outputs"][1]["data"] == pytest.approx([0.7, 0.2])
    assert raw[length:] == b"\x03\x00\x00\x00bee\x01\x00\x00\x00c"

"""Property-based tests (hypothesis) of the codec and image preprocessing on hostile input.

Whatever a client sends, ``codec.decode_request``, ``preprocess.decode_image``,
``images.to_mode`` and ``preprocess.check_tensor`` either return a well-formed result
or raise one of the project's 4xx errors (``BadInput``, ``TooLarge``) with a one-line
message that never quotes the payload. Valid inputs of every supported format and mode
decode to the model's shape with the right pixels.

Runs are deterministic and bounded (``derandomize=True``, fixed ``max_examples``); set
``PREDICTOR_HYPOTHESIS_PROFILE=explore`` to search with fresh random examples and a
larger budget.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from predictor.edge import protocols as codec
from predictor.edge import rest_v2
from predictor.errors import BadInput, PredictorError, TooLarge
from predictor.serving.request import ImageRequest
from predictor.store.manifest import read_manifest
from predictor.store.spec import InputSpec
from predictor.tasks import classification as preprocess
from predictor.tasks import images
from predictor.tasks.base import MAX_INT
from predictor.tasks.classification import Classification
from tests.fuzz import corpus
from tests.support import DIGITS, ROOT

T = TypeVar("T")

settings.register_profile(
    "predictor-ci",
    derandomize=True,
    database=None,
    max_examples=150,
    deadline=timedelta(seconds=20),  # a hang detector on a slow shared box, not a benchmark
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "explore",
    parent=settings.get_profile("predictor-ci"),
    derandomize=False,
    max_examples=2000,
)
PROFILE = settings.get_profile(os.environ.get("PREDICTOR_HYPOTHESIS_PROFILE", "predictor-ci"))

#: The digits model's input, and an RGB model with a non-square crop (height 32, width 28).
SPEC_L = InputSpec("L", 32, (32, 32), (0.25,), (0.35,), 0)
SPEC_RGB = InputSpec("RGB", 36, (32, 28), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 255)
SPECS = st.sampled_from([SPEC_L, SPEC_RGB])
#: The classification task of the demo model: checks request parameters as the server does.
TASK = Classification(read_manifest(DIGITS, "digits"))
MAX_PIXELS = 40_000_000  # the server's default --max-image-pixels
#: Planted in payload values (image bytes, base64 text, data, parameter values): error
#: messages must never quote it.
MARKER = "ZQX7HOSTILE7ZQX"

VALID = corpus.valid_images()


# -- helpers -------------------------------------------------------------------------------


def client_error_or(call: Callable[[], T]) -> T | None:
    """Run ``call``; a project 4xx error gives None, anything else escapes and fails."""
    try:
        return call()
    except PredictorError as exc:
        error = exc
    check_client_error(error)
    return None


def check_client_error(error: PredictorError) -> None:
    """A 4xx the client caused, with a one-line message that does not quote the payload."""
    assert isinstance(error, BadInput | TooLarge), f"unexpected {type(error).__name__}"
    assert 400 <= error.status < 500, f"{type(error).__name__} has status {error.status}"
    assert error.message == str(error)
    assert "\n" not in error.message, error.message
    assert "\r" not in error.message, error.message
    assert 0 < len(error.message) <= 300, error.message
    assert MARKER not in error.message, error.message


def check_pixels(pixels: np.ndarray, spec: InputSpec) -> None:
    """The decoded image has exactly the model's input layout."""
    assert pixels.shape == (*spec.crop, spec.channels)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- strategies ----------------------------------------------------------------------------

marked_text = st.text(max_size=12).map(lambda s: s + MARKER)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | marked_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
blobs = st.binary(max_size=64) | marked_text.map(str.encode)


@st.composite
def base64_texts(draw: st.DrawFn) -> str:
    """Base64 text: valid, URL-safe, with whitespace, unpadded, or corrupted."""
    text = b64(draw(blobs))
    variant = draw(st.sampled_from(["plain", "urlsafe", "spaces", "unpadded", "junk", "marker"]))
    if variant == "urlsafe":
        text = text.replace("+", "-").replace("/", "_")
    elif variant == "spaces":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([" ", "\n", "\r\n", "\t"])) + text[at:]
    elif variant == "unpadded":
        text = text.rstrip("=")
    elif variant == "junk":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=4)) + text[at:]
    elif variant == "marker":
        text = MARKER + text
    return text


instances = (
    base64_texts()
    | base64_texts().map(lambda t: {"b64": t})
    | base64_texts().map(lambda t: {"image_bytes": {"b64": t}})
    | json_values
)
param_values = (
    st.integers(min_value=-(10**30), max_value=10**30)
    | st.integers(1, 2**31 - 1).map(str)
    | st.integers().map(lambda i: f" {i} ")
    | st.sampled_from(["", "+5", "1_000", "١٢", "5.0", "0x10", "1e3", "-0", MARKER])
    | json_values
)
parameters = (
    st.dictionaries(
        st.sampled_from(["top_k", "timeout_ms", "binary_data_output", "x"]), param_values
    )
    | json_values
)


@st.composite
def v1_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """v1 JSON bodies, from nearly valid to arbitrary."""
    if draw(st.booleans()):
        body: dict[str, Any] = {"instances": draw(st.lists(instances, max_size=5))}
        if draw(st.booleans()):
            body["parameters"] = draw(parameters)
        return body
    return draw(st.dictionaries(st.sampled_from(["instances", "parameters", "x"]), json_values))


datatypes = st.sampled_from(
    ["BYTES", "FP32", "FP16", "FP64", "INT32", "INT64", "UINT8", "BOOL", "bytes", "fp32"]
) | st.text(max_size=8)
shapes = (
    st.lists(st.integers(0, 6), min_size=1, max_size=5)
    | st.lists(st.integers(), max_size=6)
    | st.lists(st.integers(-(10**30), 10**30), max_size=3)
    | st.lists(
        st.one_of(st.integers(0, 4), st.floats(), st.text(max_size=2), st.booleans()), max_size=4
    )
    | st.text(max_size=4)
    | st.none()
)
tensor_data = (
    st.lists(st.floats(width=32, allow_nan=False), max_size=40)
    | st.lists(base64_texts(), max_size=4)
    | st.lists(st.lists(st.floats(width=32) | st.integers(), max_size=6), max_size=6)  # ragged
    | st.lists(json_values, max_size=6)
    | json_values
)


@st.composite
def rest_infer_requests(draw: st.DrawFn) -> InferRequest:
    """v2 requests as the REST routes build them (JSON, or the binary extension)."""
    inputs = [
        InferInput(
            name=draw(st.text(max_size=40) | st.none() | st.integers()),
            shape=draw(shapes),
            datatype=draw(datatypes),
            data=draw(tensor_data),
            parameters=draw(st.none() | st.dictionaries(st.text(max_size=8), json_scalars)),
        )
        for _ in range(draw(st.integers(0, 2) | st.just(1)))
    ]
    return InferRequest(
        model_name="digits",
        infer_inputs=inputs,
        request_id=draw(st.none() | st.text(max_size=8) | st.integers()),
        parameters=draw(st.none() | parameters),
    )


def frame_bytes(values: list[bytes]) -> bytes:
    """The gRPC raw BYTES framing: a 4-byte little-endian length before each element."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


@st.composite
def raw_contents(draw: st.DrawFn, datatype: str) -> bytes:
    """Raw tensor contents for gRPC: well framed, truncated, or with lying length fields."""
    if datatype == "BYTES":
        raw = frame_bytes(draw(st.lists(blobs, max_size=4)))
    else:
        raw = draw(st.binary(max_size=80))
    mutation = draw(st.sampled_from(["none", "truncate", "length", "append"]))
    if mutation == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif mutation == "length" and len(raw) >= 4:
        at = draw(st.integers(0, len(raw) - 4))
        raw = raw[:at] + draw(st.binary(min_size=4, max_size=4)) + raw[at + 4 :]
    elif mutation == "append":
        raw += draw(st.binary(min_size=1, max_size=8))
    return raw


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """gRPC ModelInferRequests: raw contents, typed contents and odd parameters."""
    request = pb.ModelInferRequest(model_name="digits", id=draw(st.text(max_size=8)))
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2) | st.just(1))):
        datatype = draw(datatypes.filter(lambda d: d.isascii()))
        tensor = request.inputs.add(name=draw(st.text(max_size=20)), datatype=datatype)
        tensor.shape.extend(
            draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 5), max_size=5))
        )
        if use_raw:
            request.raw_input_contents.append(draw(raw_contents(datatype.upper())))
        elif datatype.upper() == "BYTES":
            tensor.contents.bytes_contents.extend(draw(st.lists(blobs, max_size=4)))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=20)))
    if draw(st.booleans()) and use_raw and request.inputs:
        request.raw_input_contents.append(b"extra")  # more raw contents than inputs
    for key in draw(
        st.lists(st.sampled_from(["top_k", "timeout_ms", "x"]), max_size=3, unique=True)
    ):
        kind = draw(st.sampled_from(["bool", "int64", "string"]))
        param = request.parameters[key]
        if kind == "bool":
            param.bool_param = draw(st.booleans())
        elif kind == "int64":
            param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        else:
            param.string_param = draw(st.text(max_size=12) | st.just(MARKER))
    return request


def from_grpc(message: pb.ModelInferRequest) -> InferRequest | None:
    """What KServe's gRPC servicer hands the model; None where KServe itself refuses (400)."""
    try:
        InferenceServicer.validate_grpc_request(message)
        return InferRequest.from_grpc(message)
    except InvalidInput:
        return None


timeout_headers = st.dictionaries(
    st.sampled_from([codec.TIMEOUT_HEADER, "x-request-id", "content-type"]),
    st.text(max_size=12)
    | st.integers(-(10**12), 10**12).map(str)
    | st.integers(1, 2**31 - 1).map(lambda i: f" {i}\t")
    | st.just(MARKER),
)


# -- codec: arbitrary input ----------------------------------------------------------------


def check_request(request: ImageRequest) -> None:
    """Invariants of every decoded request."""
    assert request.images, "a decoded request holds at least one image"
    assert len(request.images) <= codec.MAX_IMAGES
    for image in request.images:
        assert isinstance(image, bytes | np.ndarray)
        if isinstance(image, np.ndarray):
            assert image.dtype == np.float32
            assert image.ndim == 3
    timeout = request.timeout_ms
    assert timeout is None or (type(timeout) is int and 1 <= timeout <= MAX_INT)
    assert all(isinstance(key, str) for key in request.parameters)
    checked = client_error_or(lambda: TASK.check_parameters(request.parameters))
    if checked is not None and "top_k" in checked:
        assert type(checked["top_k"]) is int
        assert 1 <= checked["top_k"] <= MAX_INT
    assert request.protocol in ("v1", "v2", "grpc")
    assert request.request_id is None or isinstance(request.request_id, str)


@PROFILE
@given(payload=st.binary(max_size=256) | marked_text.map(str.encode), headers=timeout_headers)
def test_raw_body_is_one_image(payload: bytes, headers: dict[str, str]) -> None:
    request = client_error_or(lambda: codec.decode_request(payload, headers))
    if request is not None:
        check_request(request)
        assert request.images == [payload]
        assert request.protocol == "v1"


@PROFILE
@given(payload=json_values | st.binary(max_size=16).map(bytearray) | st.builds(object))
def test_any_json_value_is_handled(payload: object) -> None:
    request = client_error_or(lambda: codec.decode_request(payload))
    if request is not None:
        check_request(request)


@PROFILE
@given(body=v1_bodies(), headers=timeout_headers)
@example(body={"instances": ["AAAA"], "parameters": {"top_k": -(10**5000)}}, headers={})
@example(body={"instances": ["AAAA"], "parameters": {"timeout_ms": 10**400}}, headers={})
@example(body={"instances": ["AAAA"]}, headers={codec.TIMEOUT_HEADER: "1" + "0" * 400})
def test_v1_json_bodies(body: dict[str, Any], headers: dict[str, str]) -> None:
    request = client_error_or(lambda: codec.decode_request(body, headers))
    if request is not None:
        check_request(request)
        assert request.protocol == "v1"
        assert len(request.images) == len(body["instances"])
        assert all(isinstance(image, bytes) for image in request.images)


@PROFILE
@given(infer=rest_infer_requests(), headers=timeout_headers)
@example(
    infer=InferRequest("digits", [InferInput("image", [1], "BYTES", ["AAAA"])], parameters="x"),
    headers={},
)
@example(
    infer=InferRequest("digits", [InferInput("t", "abcd", "FP32", [1.0])]),
    headers={},
)
@example(
    infer=InferRequest("digits", [InferInput("t", [1, 2**70, 1, 1], "FP32", [1.0])]),
    headers={},
)
def test_v2_rest_requests(infer: InferRequest, headers: dict[str, str]) -> None:
    request = client_error_or(lambda: codec.decode_request(infer, headers))
    if request is not None:
        check_request(request)
        assert request.protocol == "v2"
        assert len(request.images) == infer.inputs[0].shape[0] or len(infer.inputs[0].shape) == 3


@PROFILE
@given(message=grpc_requests(), headers=timeout_headers)
def test_grpc_requests(message: pb.ModelInferRequest, headers: dict[str, str]) -> None:
    infer = from_grpc(message)
    assume(infer is not None)
    assert infer is not None
    request = client_error_or(lambda: codec.decode_request(infer, headers))
    if request is not None:
        check_request(request)
        assert request.protocol == "grpc"


@st.composite
def rest_v2_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Raw v2 REST bodies and headers: JSON, or the binary extension with any framing."""
    header: object = draw(
        st.fixed_dictionaries(
            {
                "inputs": st.lists(
                    st.dictionaries(
                        st.sampled_from(["name", "shape", "datatype", "data", "parameters"]),
                        json_values,
                    ),
                    max_size=2,
                )
            },
            optional={"parameters": parameters, "id": json_scalars, "outputs": json_values},
        )
        | json_values
    )
    head = json.dumps(header, default=str).encode()
    if draw(st.booleans()):
        return head, {"content-type": "application/json"}
    tail = draw(raw_contents("BYTES") | st.binary(max_size=64))
    length = draw(st.just(str(len(head))) | st.text(max_size=6) | st.integers(-5, 500).map(str))
    return head + tail, {"inference-header-content-length": length}


@PROFILE
@given(request=rest_v2_bodies())
def test_any_v2_rest_body_decodes_or_is_a_4xx(request: tuple[bytes, dict[str, str]]) -> None:
    """The server's own v2 REST parsing (JSON and binary extension) fails only with 400s."""
    body, headers = request
    infer = client_error_or(lambda: rest_v2.parse_request(body, headers, "digits"))
    if infer is None:
        return
    result = client_error_or(lambda: codec.decode_request(infer, headers))
    if result is not None:
        check_request(result)


def test_grpc_bytes_framing_is_never_expanded_beyond_the_shape() -> None:
    """A raw BYTES tensor of a million empty elements against shape [1] is refused without
    building a million objects (the split stops one element past the shape)."""
    raw = frame_bytes([b""] * 1_000_000)
    message = pb.ModelInferRequest(model_name="digits", raw_input_contents=[raw])
    message.inputs.add(name="image", datatype="BYTES", shape=[1])
    infer = from_grpc(message)
    assert infer is not None
    with pytest.raises(BadInput, match="has 2 elements but shape says 1"):
        codec.decode_request(infer)


def test_more_images_than_the_limit_are_too_large() -> None:
    raw = np.zeros((5, 1, 2, 2), np.float32).tobytes()
    message = pb.ModelInferRequest(model_name="digits", raw_input_contents=[raw])
    message.inputs.add(name="tensor", datatype="FP32", shape=[5, 1, 2, 2])
    infer = from_grpc(message)
    assert infer is not None
    with pytest.raises(TooLarge, match="5 images; the limit is 4"):
        codec.decode_request(infer, max_images=4)
    with pytest.raises(TooLarge):
        codec.decode_request({"instances": ["AAAA"] * 5}, max_images=4)
    assert len(codec.decode_request(infer, max_images=5).images) == 5


# -- codec: valid input round-trips --------------------------------------------------------


encodings = st.sampled_from(["bare", "b64", "image_bytes"])


@PROFILE
@given(
    images=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=5),
    forms=st.lists(encodings, min_size=5, max_size=5),
    urlsafe=st.booleans(),
    top_k=st.none() | st.integers(1, 2**31 - 1),
    timeout_ms=st.none() | st.integers(1, 2**31 - 1),
    header_ms=st.none() | st.integers(1, 2**31 - 1),
)
def test_v1_round_trip(
    images: list[bytes],
    forms: list[str],
    urlsafe: bool,
    top_k: int | None,
    timeout_ms: int | None,
    header_ms: int | None,
) -> None:
    def wrap(data: bytes, form: str) -> object:
        text = base64.urlsafe_b64encode(data).decode() if urlsafe else b64(data)
        return {"bare": text, "b64": {"b64": text}, "image_bytes": {"image_bytes": {"b64": text}}}[
            form
        ]

    body: dict[str, Any] = {"instances": [wrap(i, f) for i, f in zip(images, forms, strict=False)]}
    params = {k: v for k, v in (("top_k", top_k), ("timeout_ms", timeout_ms)) if v is not None}
    if params:
        body["parameters"] = params
    headers = {} if header_ms is None else {codec.TIMEOUT_HEADER: str(header_ms)}
    request = codec.decode_request(json.loads(json.dumps(body)), headers)
    assert request.images == images
    assert request.parameters.get("top_k") == top_k
    timeouts = [t for t in (timeout_ms, header_ms) if t is not None]
    assert request.timeout_ms == (min(timeouts) if timeouts else None)


@PROFILE
@given(
    images=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=5),
    column=st.booleans(),
    top_k=st.integers(1, 100),
)
def test_v2_bytes_round_trip(images: list[bytes], column: bool, top_k: int) -> None:
    shape = [len(images), 1] if column else [len(images)]
    rest = InferRequest(
        "digits",
        [InferInput("image", shape, "BYTES", [b64(i) for i in images])],
        request_id="r-1",
        parameters={"top_k": top_k},
    )
    decoded = codec.decode_request(rest)
    assert decoded.images == images
    assert (decoded.protocol, decoded.request_id) == ("v2", "r-1")
    assert decoded.parameters == {"top_k": top_k}

    message = pb.ModelInferRequest(model_name="digits", raw_input_contents=[frame_bytes(images)])
    message.inputs.add(name="image", datatype="BYTES", shape=shape)
    message.parameters["top_k"].int64_param = top_k
    message.parameters["timeout_ms"].string_param = "1500"
    infer = from_grpc(message)
    assert infer is not None
    decoded = codec.decode_request(infer)
    assert decoded.images == images
    assert (decoded.protocol, decoded.timeout_ms) == ("grpc", 1500)
    assert TASK.check_parameters(decoded.parameters) == {"top_k": top_k}
    assert decoded.binary_outputs


@PROFILE
@given(
    tensor=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=4),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    nested=st.booleans(),
)
def test_v2_fp32_round_trip(tensor: np.ndarray, nested: bool) -> None:
    data = tensor.tolist() if nested else tensor.reshape(-1).tolist()
    rest = InferRequest("digits", [InferInput("tensor", list(tensor.shape), "FP32", data)])
    message = pb.ModelInferRequest(model_name="digits", raw_input_contents=[tensor.tobytes()])
    message.inputs.add(name="tensor", datatype="FP32", shape=list(tensor.shape))
    grpc = from_grpc(message)
    assert grpc is not None
    for infer in (rest, grpc):
        decoded = codec.decode_request(infer)
        assert len(decoded.images) == tensor.shape[0]
        for got, want in zip(decoded.images, tensor, strict=True):
            assert isinstance(got, np.ndarray)
            np.testing.assert_array_equal(got, want)


# -- preprocess: arbitrary and mutated bytes -----------------------------------------------

magic = st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8X", b"GIF89a"]
)


@PROFILE
@given(prefix=magic, tail=st.binary(max_size=300), spec=SPECS)
def test_arbitrary_bytes_decode_or_4xx(prefix: bytes, tail: bytes, spec: InputSpec) -> None:
    pixels = client_error_or(lambda: preprocess.decode_image(prefix + tail, spec, MAX_PIXELS))
    if pixels is not None:
        check_pixels(pixels, spec)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image of any format and mode, then bit flips, cuts, overwrites, inserts."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "huge"]))
        at = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16)) + MARKER.encode()
        elif op == "huge":
            data[at : at + 4] = b"\xff\xff\xff\x7f"
    return bytes(data)


@settings(PROFILE, max_examples=2 * PROFILE.max_examples)
@given(data=mutated_images(), spec=SPECS)
def test_mutated_images_decode_or_4xx(data: bytes, spec: InputSpec) -> None:
    pixels = client_error_or(lambda: preprocess.decode_image(data, spec, 1 << 20))
    if pixels is not None:
        check_pixels(pixels, spec)


@PROFILE
@given(
    name=st.sampled_from(sorted(VALID)),
    fmt_size=st.data(),
    max_pixels=st.integers(1, 1 << 20),
    spec=SPECS,
)
def test_declared_size_over_the_limit_is_too_large(
    name: str, fmt_size: st.DataObject, max_pixels: int, spec: InputSpec
) -> None:
    """Headers rewritten to announce any size: over the limit is always TooLarge."""
    fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP"}[name.split("-")[0]]
    assume(not name.startswith("bmp-rle"))
    top = corpus.MAX_DECLARABLE[fmt]
    width = fmt_size.draw(st.integers(1, top) | st.integers(1, 2048), label="width")
    height = fmt_size.draw(st.integers(1, top) | st.integers(1, 2048), label="height")
    data = corpus.declare_size(VALID[name], fmt, width, height)
    if fmt == "WEBP" and data[12:16] == b"VP8 ":
        width, height = min(width, 16383), min(height, 16383)
    if width * height > max_pixels:
        with pytest.raises(TooLarge, match=f"{width}x{height}"):
            preprocess.decode_image(data, spec, max_pixels)
    else:
        pixels = client_error_or(lambda: preprocess.decode_image(data, spec, max_pixels))
        if pixels is not None:
            check_pixels(pixels, spec)


_BOUNDED = textwrap.dedent(
    """
    import json, resource, sys
    from predictor.errors import PredictorError
    from predictor.store.spec import InputSpec
    from predictor.tasks import classification as preprocess
    from predictor.tasks import images
    from tests.fuzz import corpus

    images.lift_pillow_bomb_guard()  # as the server does at start

    lossless = corpus.encode(corpus.Image.new("RGB", (8, 8)), "WEBP", lossless=True)
    BIG = ("PNG", "JPEG", "BMP")
    cases = {
        **{f"{f} 50000x50000": corpus.declared_bomb(f, 50000, 50000) for f in BIG},
        "WEBP 16384x16384 (animated)": corpus.declared_bomb("WEBP", 16384, 16384),
        "WEBP 16384x16384 (lossless)": corpus.declare_size(lossless, "WEBP", 16384, 16384),
        "PNG 1x2000000": corpus.thin_png(1, 2_000_000),
        "PNG 2000000x1": corpus.thin_png(2_000_000, 1),
    }
    spec = InputSpec("L", 32, (32, 32), (0.25,), (0.35,), 0)
    with open("/proc/self/status") as status:
        vm_kib = next(int(l.split()[1]) for l in status if l.startswith("VmSize:"))
    headroom = 384 << 20
    resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + headroom, vm_kib * 1024 + headroom))
    out = {}
    for name, data in cases.items():
        try:
            out[name] = list(preprocess.decode_image(data, spec, 40_000_000).shape)
        except PredictorError as exc:
            out[name] = f"{type(exc).__name__}: {exc.message}"
        except MemoryError:
            out[name] = "MemoryError"
    print(json.dumps(out))
    """
)


def test_huge_declared_images_are_refused_within_bounded_memory() -> None:
    """Refused from the header, before decoding, with 384 MiB of address space to spare.

    Decoding any of them would need gigabytes: 50000 x 50000 is 2.5 G pixels, a WebP canvas
    of 16384 x 16384 is 1 GiB per frame buffer, and resizing a 1 x 2,000,000 image's
    shorter side to 32 would make a 32 x 64,000,000 intermediate.
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _BOUNDED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("PNG 50000x50000", "JPEG 50000x50000", "BMP 50000x50000"):
        assert outcomes[name] == (
            "TooLarge: image is 50000x50000 = 2500000000 pixels; the limit is 40000000"
        ), name
    for name in ("WEBP 16384x16384 (animated)", "WEBP 16384x16384 (lossless)"):
        assert outcomes[name].startswith("TooLarge: image is 16384x16384"), outcomes[name]
    assert outcomes["PNG 1x2000000"] == [32, 32, 1]
    assert outcomes["PNG 2000000x1"] == [32, 32, 1]


# -- preprocess: every mode, tensors -------------------------------------------------------

ALL_MODES = sorted(set(Image.MODES) | {"I;16", "I;16B", "I;16L", "I;16N", "La", "PA", "RGBa"})


@st.composite
def images_of_any_mode(draw: st.DrawFn) -> Image.Image:
    mode = draw(st.sampled_from(ALL_MODES))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    blank = Image.new(mode, size)
    raw = draw(st.binary(min_size=len(blank.tobytes()), max_size=len(blank.tobytes())))
    image = Image.frombytes(mode, size, raw)
    if mode in ("P", "PA"):
        image.putpalette(draw(st.binary(min_size=768, max_size=768)))
    if mode in ("P", "L", "RGB") and draw(st.booleans()):
        image.info["transparency"] = (1, 2, 3) if mode == "RGB" else draw(st.integers(0, 255))
    return image


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("spec", [SPEC_L, SPEC_RGB], ids=["L", "RGB"])
def test_to_mode_converts_every_pillow_mode(mode: str, spec: InputSpec) -> None:
    image = Image.new(mode, (5, 3))
    converted = images.to_mode(image, spec.color, spec.background)
    assert converted.mode == spec.color
    assert converted.size == (5, 3)


@PROFILE
@given(image=images_of_any_mode(), spec=SPECS)
def test_to_mode_and_resize_any_content(image: Image.Image, spec: InputSpec) -> None:
    converted = client_error_or(lambda: images.to_mode(image, spec.color, spec.background))
    assert converted is not None, f"mode {image.mode} is not converted"
    assert converted.mode == spec.color
    assert converted.size == image.size
    check_pixels(preprocess.resize_crop(converted, spec), spec)


real_dtypes = (
    hnp.boolean_dtypes()
    | hnp.integer_dtypes()
    | hnp.unsigned_integer_dtypes()
    | hnp.floating_dtypes()
)
odd_dtypes = (
    hnp.complex_number_dtypes()
    | hnp.datetime64_dtypes()
    | hnp.timedelta64_dtypes()
    | hnp.byte_string_dtypes()
    | hnp.unicode_string_dtypes()
)


@PROFILE
@given(
    array=hnp.arrays(
        real_dtypes | odd_dtypes,
        st.sampled_from([(1, 32, 32), (3, 32, 28)]) | hnp.array_shapes(max_dims=4, max_side=6),
    ),
    spec=SPECS,
)
def test_check_tensor_arbitrary_arrays(array: np.ndarray, spec: InputSpec) -> None:
    out = client_error_or(lambda: preprocess.check_tensor(array, spec))
    if out is not None:
        assert out.shape == (spec.channels, *spec.crop)
        assert out.dtype == np.float32
        assert out.flags.c_contiguous
        assert np.isfinite(out).all()
        assert array.dtype.kind in "biuf"
        np.testing.assert_array_equal(out, array.astype(np.float32))


@st.composite
def finite_real_tensors(draw: st.DrawFn) -> np.ndarray:
    """(3, 32, 28) tensors of any real dtype whose values stay finite as float32."""
    dtype = draw(real_dtypes)
    options: dict[str, Any] = {}
    if dtype.kind == "f":
        options = {"allow_nan": False, "allow_infinity": False}
        if dtype.itemsize > 4:
            options.update(min_value=-3e38, max_value=3e38)
    array: np.ndarray = draw(
        hnp.arrays(dtype, (3, 32, 28), elements=hnp.from_dtype(dtype, **options))
    )
    return array


@PROFILE
@given(array=finite_real_tensors())
def test_check_tensor_accepts_every_finite_real_tensor(array: np.ndarray) -> None:
    out = preprocess.check_tensor(array, SPEC_RGB)
    np.testing.assert_array_equal(out, array.astype(np.float32))


# -- preprocess: valid images decode to the right pixels -----------------------------------


def decoded(data: bytes, spec: InputSpec) -> np.ndarray:
    pixels = preprocess.decode_image(data, spec, MAX_PIXELS)
    check_pixels(pixels, spec)
    return pixels


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize("spec", [SPEC_L, SPEC_RGB], ids=["L", "RGB"])
def test_every_valid_format_and_mode_decodes(name: str, spec: InputSpec) -> None:
    pixels = decoded(VALID[name], spec)
    assert pixels.std() > 0, "the test images have structure; a flat result lost it"


def expected_colour(rgb: tuple[int, int, int], spec: InputSpec) -> np.ndarray:
    """A colour as the model should see it (Pillow's ITU-R 601 luma for grayscale)."""
    return np.asarray(Image.new("RGB", (1, 1), rgb).convert(spec.color)).reshape(-1)


def composite(rgb: tuple[int, int, int], alpha: int, background: int) -> tuple[int, int, int]:
    r, g, b = (round((c * alpha + background * (255 - alpha)) / 255) for c in rgb)
    return (r, g, b)


LOSSLESS = ("PNG", "BMP", "WEBP")
colours = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))


@PROFILE
@given(
    fmt=st.sampled_from(LOSSLESS),
    mode=st.sampled_from(["L", "RGB"]),
    colour=colours,
    size=st.tuples(st.integers(1, 90), st.integers(1, 90)),
    spec=SPECS,
)
def test_solid_images_keep_their_colour(
    fmt: str, mode: str, colour: tuple[int, int, int], size: tuple[int, int], spec: InputSpec
) -> None:
    """Any size, any aspect ratio: resizing and cropping a flat image keeps its value."""
    image = Image.new("RGB", size, colour).convert(mode)
    data = corpus.encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    r, g, b = (int(v) for v in np.asarray(image.convert("RGB"))[0, 0])
    want = expected_colour((r, g, b), spec)
    assert (decoded(data, spec) == want).all()


@PROFILE
@given(colour=colours, alpha=st.integers(0, 255), fmt=st.sampled_from(["PNG", "WEBP"]), spec=SPECS)
def test_alpha_is_composited_over_the_background(
    colour: tuple[int, int, int], alpha: int, fmt: str, spec: InputSpec
) -> None:
    image = Image.new("RGBA", (20, 12), (*colour, alpha))
    data = corpus.encode(image, fmt, **({"lossless": True, "exact": True} if fmt == "WEBP" else {}))
    want = expected_colour(composite(colour, alpha, spec.background), spec)
    got = decoded(data, spec)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (got[0, 0], want)


@PROFILE
@given(colour=colours, alpha=st.integers(0, 255), spec=SPECS)
def test_gray_alpha_is_composited_over_the_background(
    colour: tuple[int, int, int], alpha: int, spec: InputSpec
) -> None:
    gray = int(expected_colour(colour, SPEC_L)[0])
    data = corpus.encode(Image.new("LA", (9, 14), (gray, alpha)), "PNG")
    want = expected_colour(composite((gray, gray, gray), alpha, spec.background), spec)
    got = decoded(data, spec)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_palette_transparency_shows_the_background() -> None:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([10, 200, 30, 250, 250, 250] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, 16, 8))  # top half: index 1, bottom half: index 0
    data = corpus.encode(image, "PNG", transparency=0)
    for spec in (SPEC_L, SPEC_RGB):
        got = decoded(data, spec)
        crop_h = spec.crop[0]
        top, bottom = got[: crop_h // 2 - 2], got[crop_h // 2 + 2 :]
        assert (top == expected_colour((250, 250, 250), spec)).all()
        assert (bottom == spec.background).all(), "the transparent index is the background"


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_transparency_colour_of_gray_and_rgb_png_shows_the_background(mode: str) -> None:
    image = Image.new("RGB", (16, 16), (40, 40, 40)).convert(mode)
    image.paste(Image.new(mode, (16, 8), 200 if mode == "L" else (200, 200, 200)), (0, 0))
    data = corpus.encode(image, "PNG", transparency=40 if mode == "L" else (40, 40, 40))
    got = decoded(data, SPEC_L)
    assert (got[:14] == 200).all()
    assert (got[18:] == SPEC_L.background).all()


def test_cmyk_jpeg_decodes_to_its_rgb_colour() -> None:
    rgb = (200, 60, 30)
    data = corpus.encode(Image.new("RGB", (40, 40), rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    for spec in (SPEC_L, SPEC_RGB):
        got = decoded(data, spec).astype(int)
        assert np.abs(got - expected_colour(rgb, spec).astype(int)).max() <= 3


@PROFILE
@given(values=hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40))), spec=SPECS)
def test_sixteen_bit_png_scales_to_the_same_8_bit_values(
    values: np.ndarray, spec: InputSpec
) -> None:
    eight = corpus.encode(Image.fromarray(values, "L"), "PNG")
    sixteen = corpus.encode(Image.fromarray(values.astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(sixteen)).mode == "I;16"
    np.testing.assert_array_equal(decoded(sixteen, spec), decoded(eight, spec))


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    got = decoded(corpus.encode(Image.fromarray(ramp), "PNG"), SPEC_L)[:, :, 0]
    assert got.min() <= 4
    assert got.max() >= 251
    assert len(np.unique(got)) > 16, "a clipped ramp would be almost all 255"
    assert (np.diff(got.astype(int), axis=1) >= 0).all(), "still a ramp"


@pytest.mark.parametrize("orientation", [6, 8])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(orientation: int, fmt: str) -> None:
    upright = Image.fromarray(corpus.pattern(60, 40, seed=orientation), "RGB")
    options: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    stored = corpus.oriented(upright, orientation)
    rotated = corpus.encode(stored, fmt, exif=corpus.exif_bytes(orientation), **options)
    plain = corpus.encode(upright, fmt, **options)
    unrotated = corpus.encode(stored, fmt, **options)  # same pixels, no orientation tag
    for spec in (SPEC_L, SPEC_RGB):
        got, want = decoded(rotated, spec).astype(int), decoded(plain, spec).astype(int)
        ignored = decoded(unrotated, spec).astype(int)
        if fmt == "PNG":
            np.testing.assert_array_equal(got, want)
        else:
            assert np.abs(got - want).mean() < 3, "JPEG re-encoding noise only"
        assert np.abs(ignored - want).mean() > 20, "the orientation makes a difference"


def test_very_thin_images_resize_like_the_full_image() -> None:
    """The bounded (region) resize gives the full resize's pixels, up to rounding."""
    for size in [(3, 700), (700, 3), (40, 3000)]:
        image = Image.fromarray(corpus.pattern(*size), "RGB")
        full = preprocess.RESIZE_FULL_MAX_PIXELS
        try:
            preprocess.RESIZE_FULL_MAX_PIXELS = 0  # force the region path
            region = preprocess.resize_crop(image, SPEC_RGB).astype(int)
        finally:
            preprocess.RESIZE_FULL_MAX_PIXELS = full
        whole = preprocess.resize_crop(image, SPEC_RGB).astype(int)
        assert np.abs(region - whole).max() <= 2
        assert np.abs(region - whole).mean() < 0.5


def _repeat_last_scan(data: bytes, times: int) -> bytes:
    """A progressive JPEG with its last scan repeated: every scan passes over the image."""
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * times + b"\xff\xd9"


def test_jpeg_scan_bombs_are_refused_before_decoding() -> None:
    image = Image.fromarray(corpus.pattern(64, 48), "RGB")
    progressive = corpus.encode(image, "JPEG", progressive=True, quality=80)
    scans = progressive.count(b"\xff\xda")
    check_pixels(preprocess.decode_image(progressive, SPEC_RGB, MAX_PIXELS), SPEC_RGB)
    # Repeating a scan makes an inconsistent progression, which the strict decoder refuses
    # (at the limit), and the scan counter refuses from the structure alone (past it).
    within = _repeat_last_scan(progressive, images.MAX_JPEG_SCANS - scans)
    with pytest.raises(BadInput, match="Inconsistent progression"):
        preprocess.decode_image(within, SPEC_RGB, MAX_PIXELS)
    bomb = _repeat_last_scan(progressive, images.MAX_JPEG_SCANS - scans + 1)
    with pytest.raises(BadInput, match=f"more than {images.MAX_JPEG_SCANS} scans"):
        preprocess.decode_image(bomb, SPEC_RGB, MAX_PIXELS)

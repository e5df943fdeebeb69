"""Security checks: manifest paths, safe weight loading, error bodies and logs.

* Files named by a manifest (``weights``, ``labels``, ``program``) cannot escape the model
  directory: ``..``, absolute paths, and symbolic links pointing outside are refused.
* Weights load only through safe loaders: a pickle payload in ``weights.pt`` or inside a
  ``.pt2`` program fails with ``ModelStoreError`` and does NOT run (a marker file that the
  payload would create proves it; the same payload loaded the unsafe way does create it).
* Against the live shared ``digits_server``: hostile requests (corrupt images carrying a
  marker string, malformed JSON, bad base64, wrong v2 datatypes and shapes, binary-extension
  framing, unknown models, bodies over the limit, gRPC raw contents) get a 4xx with a
  one-line ``{"error": ...}`` body that carries neither the marker nor a traceback; the log
  never holds the marker; and the server keeps answering valid requests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from predictor.store.manifest import ModelStoreError, discover, read_manifest, safe_path
from tests.fuzz import corpus
from tests.support import DIGITS, PredictorProcess, digit_samples

#: Planted in every hostile payload of this module; must never come back or reach the log.
MARKER = f"HOSTILE-{uuid.uuid4().hex[:12]}"
SECRET = "confidential-content-outside-the-model-directory"  # noqa: S105 (not a password)


# -- manifest paths --------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``tmp/model`` (a valid model directory) next to ``tmp/outside/secret.txt``."""
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET, encoding="utf-8")
    shutil.copy(DIGITS / "model.json", model / "model.json")
    shutil.copy(DIGITS / "labels.txt", model / "labels.txt")
    shutil.copy(DIGITS / "labels.txt", model / "sub" / "labels.txt")
    (model / "weights.pt").write_bytes(b"not read by read_manifest")
    (model / "link-out.txt").symlink_to(outside / "secret.txt")
    (model / "link-dir").symlink_to(outside, target_is_directory=True)
    (model / "link-in.txt").symlink_to(model / "labels.txt")
    return tmp_path


def escapes(root: Path) -> list[object]:
    """Manifest values that point outside ``root / "model"`` (or are not paths at all)."""
    return [
        "../outside/secret.txt",
        str(root / "outside" / "secret.txt"),  # absolute
        "/etc/passwd",
        "sub/../../outside/secret.txt",
        "./../outside/secret.txt",
        "link-out.txt",  # symlink to a file outside
        "link-dir/secret.txt",  # through a symlinked directory
        "sub/../link-out.txt",
        "labels.txt\x00.png",
        "",
        None,
        5,
        ["labels.txt"],
        {"path": "labels.txt"},
    ]


def test_safe_path_refuses_every_escape(layout: Path) -> None:
    model = layout / "model"
    for value in escapes(layout):
        with pytest.raises(ModelStoreError) as caught:
            safe_path(model, value, "weights")
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize("key", ["weights", "labels", "program"])
def test_manifest_paths_cannot_escape(layout: Path, key: str) -> None:
    model = layout / "model"
    base = json.loads((model / "model.json").read_text(encoding="utf-8"))
    if key == "program":
        base.pop("arch")
        base.pop("weights")
    for value in escapes(layout):
        manifest = {**base, key: value}
        (model / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
        with pytest.raises(ModelStoreError) as caught:
            read_manifest(model, "digits")
        assert SECRET not in str(caught.value), value
    manifest = {**base, key: "../outside/secret.txt"}
    (model / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelStoreError, match="escapes the model directory"):
        discover(layout / "model")


def test_paths_inside_the_model_directory_are_accepted(layout: Path) -> None:
    model = layout / "model"
    for value in ["labels.txt", "./labels.txt", "sub/labels.txt", "sub/../labels.txt"]:
        assert safe_path(model, value, "labels").parent in {model, model / "sub"}
    assert safe_path(model, "link-in.txt", "labels") == (model / "labels.txt").resolve()
    # KServe mounts the model directory at /mnt/models, often itself a symbolic link.
    mounted = layout / "mnt-models"
    mounted.symlink_to(model, target_is_directory=True)
    spec = read_manifest(mounted, "digits")
    assert spec.weights == (model / "weights.pt").resolve()
    assert spec.labels[:3] == ("0", "1", "2")


# -- safe weight loading ---------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        code = f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('pwned')"
        return (exec, (code,))


@dataclass
class Bomb:
    """A model directory whose weights file runs code when unpickled."""

    directory: Path
    marker: Path
    files: list[Path] = field(default_factory=list)


def _digits_dir(root: Path, **manifest: object) -> Path:
    directory = root / "bomb"
    directory.mkdir()
    shutil.copy(DIGITS / "labels.txt", directory / "labels.txt")
    base = json.loads((DIGITS / "model.json").read_text(encoding="utf-8"))
    for key, value in manifest.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    (directory / "model.json").write_text(json.dumps(base), encoding="utf-8")
    return directory


def _proves_payload_runs(path: Path, marker: Path) -> None:
    """The control: loading ``path`` the unsafe way does run the payload."""
    import torch

    with contextlib.suppress(Exception):  # what follows the payload may or may not load
        torch.load(str(path), weights_only=False)
    assert marker.exists(), "the payload is live: plain unpickling runs it"
    marker.unlink()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(
    ("variant", "name"),
    [
        ("zip", "weights.pt"),
        ("legacy", "weights.pt"),
        ("raw-pickle", "weights.pth"),
        ("protocol-0", "weights.pt"),
    ],
)
def test_pickle_bomb_weights_do_not_run(tmp_path: Path, variant: str, name: str) -> None:
    import torch

    from predictor.store.weights import load_module

    marker = tmp_path / f"pwned-{variant}"
    directory = _digits_dir(tmp_path, weights=name)
    path = directory / name
    state = {"conv.weight": _Payload(marker)}
    if variant == "zip":
        torch.save(state, str(path))
    elif variant == "legacy":
        torch.save(state, str(path), _use_new_zipfile_serialization=False)
    elif variant == "raw-pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=0))
    _proves_payload_runs(path, marker)

    spec = read_manifest(directory, "bomb")
    with pytest.raises(ModelStoreError, match="cannot load weights"):
        load_module(spec)
    assert not marker.exists(), "loading the model ran the pickle payload"


@pytest.fixture(scope="module")
def exported_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``torch.export`` program of the digits network (random weights)."""
    import torch

    from predictor.store import archs

    module = archs.build("digits_cnn", num_classes=10).eval()
    program = torch.export.export(module, (torch.zeros(2, 1, 32, 32),))
    path = tmp_path_factory.mktemp("program") / "model.pt2"
    torch.export.save(program, str(path))
    return path


def _rewrite(source: Path, target: Path, edit: dict[str, bytes | None]) -> None:
    """Copy a zip archive, replacing members whose name ends with a key (None: drop)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info.filename)
            for suffix, replacement in edit.items():
                if info.filename.endswith(suffix):
                    data = b"" if replacement is None else replacement
            new.writestr(info, data)


def test_exported_program_loads(tmp_path: Path, exported_program: Path) -> None:
    """The guard leaves genuine programs loadable (and the process environment as it was)."""
    import torch

    from predictor.store.weights import load_module

    directory = _digits_dir(tmp_path, arch=None, weights=None, program="model.pt2")
    shutil.copy(exported_program, directory / "model.pt2")
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    module = load_module(read_manifest(directory, "program"))
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
    assert tuple(module(torch.zeros(2, 1, 32, 32)).shape) == (2, 10)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_bomb_inside_an_exported_program_does_not_run(
    tmp_path: Path, exported_program: Path
) -> None:
    """A ``.pt2`` whose weights config marks a tensor as pickled: ``torch.export.load``
    itself would unpickle it with ``weights_only=False``."""
    import torch

    from predictor.store.weights import load_module

    marker = tmp_path / "pwned-pt2"
    with zipfile.ZipFile(exported_program) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("weights_config.json"))
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    directory = _digits_dir(tmp_path, arch=None, weights=None, program="model.pt2")
    bomb = directory / "model.pt2"
    _rewrite(
        exported_program,
        bomb,
        {
            "weights_config.json": json.dumps(config).encode(),
            f"weights/{first['path_name']}": pickle.dumps(_Payload(marker)),
        },
    )
    with contextlib.suppress(Exception):
        torch.export.load(str(bomb))
    assert marker.exists(), "the control: torch.export.load alone runs the payload"
    marker.unlink()

    with pytest.raises(ModelStoreError, match="cannot load weights"):
        load_module(read_manifest(directory, "program"))
    assert not marker.exists(), "loading the program ran the pickle payload"


def test_programs_with_opaque_python_objects_are_refused(
    tmp_path: Path, exported_program: Path
) -> None:
    """Opaque-object constants go through plain ``pickle.loads``: never loaded."""
    from predictor.store.weights import load_module

    directory = _digits_dir(tmp_path, arch=None, weights=None, program="model.pt2")
    target = directory / "model.pt2"
    shutil.copy(exported_program, target)
    with zipfile.ZipFile(target, "a") as archive:
        prefix = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{prefix}/data/constants/opaque_obj_0", pickle.dumps(0))
    with pytest.raises(ModelStoreError, match="custom or opaque Python objects"):
        load_module(read_manifest(directory, "program"))


# -- live server: error bodies and logs ------------------------------------------------------

V1 = "/v1/models/digits:predict"
V2 = "/v2/models/digits/infer"


def image(content_type: str) -> dict[str, str]:
    """Request headers naming a body's content type."""
    return {"content-type": content_type}


def _binary_extension(header: dict[str, Any], tail: bytes = b"") -> dict[str, Any]:
    """A v2 request in KServe's binary extension (JSON header, then raw tensor bytes)."""
    head = json.dumps(header).encode()
    return {
        "content": head + tail,
        "headers": {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(head)),
        },
    }


def _bytes_input(values: list[str], shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": "image",
        "shape": shape or [len(values)],
        "datatype": "BYTES",
        "data": values,
    }


def hostile_http_cases() -> list[tuple[str, str, dict[str, Any], int]]:
    """(case, path, httpx request arguments, expected status)."""
    mark = MARKER.encode()
    png = corpus.valid_images()["png-L.png"]
    corrupt_png = png[:40] + mark * 8
    corrupt_jpeg = b"\xff\xd8\xff\xe0" + mark * 8
    garbage = base64.b64encode(mark * 8).decode()
    big_png = corpus.declared_bomb("PNG", 50000, 50000)
    return [
        ("raw corrupt png", V1, {"content": corrupt_png, "headers": image("image/png")}, 400),
        ("raw corrupt jpeg", V1, {"content": corrupt_jpeg, "headers": image("image/jpeg")}, 400),
        (
            "raw octet-stream",
            V1,
            {"content": mark * 8, "headers": image("application/octet-stream")},
            400,
        ),
        ("raw text/plain", V1, {"content": mark, "headers": image("text/plain")}, 400),
        ("raw empty", V1, {"content": b"", "headers": image("image/png")}, 400),
        ("declared 50000x50000", V1, {"content": big_png, "headers": image("image/png")}, 413),
        (
            "malformed json",
            V1,
            {"content": b'{"instances": [' + mark, "headers": image("application/json")},
            400,
        ),
        (
            "non-utf8 json",
            V1,
            {
                "content": b'{"instances": ["' + mark + b'\xff"]}',
                "headers": image("application/json"),
            },
            400,
        ),
        ("bad base64", V1, {"json": {"instances": [{"b64": MARKER + "!!"}]}}, 400),
        (
            "base64 of garbage",
            V1,
            {"json": {"instances": [{"image_bytes": {"b64": garbage}}]}},
            400,
        ),
        ("instances not a list", V1, {"json": {"instances": MARKER}}, 400),
        ("json list", V1, {"json": [MARKER]}, 400),
        (
            "top_k not a number",
            V1,
            {
                "json": {
                    "instances": [base64.b64encode(png).decode()],
                    "parameters": {"top_k": MARKER},
                }
            },
            400,
        ),
        (
            "timeout header not a number",
            V1,
            {"content": png, "headers": {**image("image/png"), "x-request-timeout-ms": MARKER}},
            400,
        ),
        (
            "timeout header too large",
            V1,
            {"content": png, "headers": {**image("image/png"), "x-request-timeout-ms": "9" * 400}},
            400,
        ),
        (
            "binary cloudevent",
            V1,
            {
                "content": mark * 4,
                "headers": {
                    **image("application/json"),
                    "ce-specversion": "1.0",
                    "ce-source": MARKER,
                    "ce-type": "t",
                    "ce-id": "1",
                },
            },
            400,
        ),
        (
            "v2 malformed json",
            V2,
            {"content": b'{"inputs": [' + mark, "headers": image("application/json")},
            400,
        ),
        (
            "v2 INT32 input",
            V2,
            {
                "json": {
                    "inputs": [{"name": "image", "shape": [1], "datatype": "INT32", "data": [1]}]
                }
            },
            400,
        ),
        (
            "v2 two inputs",
            V2,
            {"json": {"inputs": [_bytes_input([garbage]), _bytes_input([garbage])]}},
            400,
        ),
        (
            "v2 fp32 strings",
            V2,
            {
                "json": {
                    "inputs": [
                        {
                            "name": "tensor",
                            "shape": [1, 1, 32, 32],
                            "datatype": "FP32",
                            "data": [MARKER],
                        }
                    ]
                }
            },
            400,
        ),
        (
            "v2 fp32 wrong shape",
            V2,
            {
                "json": {
                    "inputs": [
                        {
                            "name": "tensor",
                            "shape": [1, 3, 8, 8],
                            "datatype": "FP32",
                            "data": [0.5] * 192,
                        }
                    ]
                }
            },
            400,
        ),
        (
            "v2 fp32 short data",
            V2,
            {
                "json": {
                    "inputs": [
                        {
                            "name": "tensor",
                            "shape": [2, 1, 32, 32],
                            "datatype": "FP32",
                            "data": [0.5] * 7,
                        }
                    ]
                }
            },
            400,
        ),
        (
            "v2 shape not a list",
            V2,
            {"json": {"inputs": [{"name": "t", "shape": MARKER, "datatype": "FP32", "data": [1]}]}},
            400,
        ),
        ("v2 bytes shape mismatch", V2, {"json": {"inputs": [_bytes_input([garbage], [3])]}}, 400),
        ("v2 bytes corrupt image", V2, {"json": {"inputs": [_bytes_input([garbage])]}}, 400),
        ("v2 bytes bad base64", V2, {"json": {"inputs": [_bytes_input([MARKER + "$$"])]}}, 400),
        (
            "v2 timeout_ms huge",
            V2,
            {
                "json": {
                    "inputs": [_bytes_input([base64.b64encode(png).decode()])],
                    "parameters": {"timeout_ms": 10**400},
                }
            },
            400,
        ),
        (
            "v2 unknown output",
            V2,
            {
                "json": {
                    "inputs": [_bytes_input([base64.b64encode(png).decode()])],
                    "outputs": [{"name": "nope"}],
                }
            },
            400,
        ),
        (
            "binext parameters not an object",
            V2,
            _binary_extension({"parameters": MARKER, "inputs": [_bytes_input([garbage])]}),
            400,
        ),
        ("binext no inputs", V2, _binary_extension({"x": MARKER}), 400),
        (
            "binext shape not a list",
            V2,
            _binary_extension(
                {"inputs": [{"name": "t", "shape": "abcd", "datatype": "FP32", "data": [1]}]}
            ),
            400,
        ),
        (
            "binext header length not a number",
            V2,
            {
                "content": mark,
                "headers": {
                    "content-type": "application/octet-stream",
                    "inference-header-content-length": MARKER,
                },
            },
            400,
        ),
        (
            "binext lying BYTES framing",
            V2,
            _binary_extension(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 8 + len(mark)},
                        }
                    ]
                },
                b"\xff\xff\xff\x7f" + mark + b"ABCD",
            ),
            400,
        ),
        (
            "binext raw image bytes (not UTF-8)",
            V2,
            _binary_extension(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": 4 + len(corrupt_jpeg)},
                        }
                    ]
                },
                len(corrupt_jpeg).to_bytes(4, "little") + corrupt_jpeg,
            ),
            400,
        ),
        (
            "unknown model",
            "/v1/models/no-such-model:predict",
            {"content": png, "headers": image("image/png")},
            404,
        ),
        (
            "unknown model v2",
            "/v2/models/no-such-model/infer",
            {"json": {"inputs": [_bytes_input([garbage])]}},
            404,
        ),
    ]


def check_error_body(response: httpx.Response, expected: int, case: str) -> None:
    """A one-line JSON error that quotes neither the payload nor a traceback."""
    assert response.status_code == expected, f"{case}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), case
    body = response.json()
    assert isinstance(body, dict), case
    assert list(body) == ["error"], case
    message = body["error"]
    assert isinstance(message, str), case
    assert message, case
    assert "\n" not in message, case
    assert len(message) <= 400, case
    assert MARKER not in response.text, f"{case}: the payload came back: {message}"
    assert "Traceback" not in response.text, case


@pytest.fixture(scope="module")
def server(digits_server: PredictorProcess) -> Iterator[PredictorProcess]:
    """The shared server; after this module, its log must not hold the marker."""
    yield digits_server
    assert MARKER not in digits_server.log(), "a payload reached the server log"


def _log_since(server: PredictorProcess, offset: int) -> str:
    return server.log()[offset:]


def _valid_request_works(server: PredictorProcess, client: httpx.Client) -> None:
    samples = digit_samples()
    response = client.post(V1, content=samples[4], headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0][0]["label"] == "4"


def test_hostile_http_requests_get_clean_4xx(server: PredictorProcess) -> None:
    offset = len(server.log())
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case, path, request, expected in hostile_http_cases():
            check_error_body(client.post(path, **request), expected, case)
        _valid_request_works(server, client)
    log = _log_since(server, offset)
    assert MARKER not in log
    assert "Traceback" not in log, "a client error was logged as a crash"


def test_bodies_over_the_limit_are_refused(server: PredictorProcess) -> None:
    limit = 33554432  # the default --max-body-bytes
    body = MARKER.encode() * (limit // len(MARKER) + 2)
    offset = len(server.log())
    with httpx.Client(base_url=server.url, timeout=60) as client:
        declared = client.post(V1, content=body, headers={"content-type": "image/png"})
        check_error_body(declared, 413, "over-large body with Content-Length")

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 1 << 20):
                yield body[start : start + (1 << 20)]

        try:
            streamed = client.post(V1, content=chunks(), headers={"content-type": "image/png"})
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server may answer and close before the whole body is sent
        else:
            check_error_body(streamed, 413, "over-large chunked body")
        _valid_request_works(server, client)
    assert MARKER not in _log_since(server, offset)


def _grpc_cases() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode]]:
    mark = MARKER.encode()
    png = corpus.valid_images()["png-L.png"]

    def request(
        datatype: str, shape: list[int], raw: bytes, model: str = "digits"
    ) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(model_name=model, raw_input_contents=[raw])
        message.inputs.add(name="image", datatype=datatype, shape=shape)
        return message

    def framed(*values: bytes) -> bytes:
        return b"".join(len(v).to_bytes(4, "little") + v for v in values)

    timeout = request("BYTES", [1], framed(png))
    timeout.parameters["timeout_ms"].string_param = MARKER
    contents = pb.ModelInferRequest(model_name="digits")
    contents.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        mark * 4
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("corrupt image", request("BYTES", [1], framed(png[:40] + mark * 4)), invalid),
        ("lying framing", request("BYTES", [1], b"\xff\xff\xff\x7f" + mark), invalid),
        ("count mismatch", request("BYTES", [3], framed(mark, mark)), invalid),
        ("fp32 odd length", request("FP32", [1, 1, 32, 32], mark), invalid),
        ("fp32 wrong shape", request("FP32", [1, 1, 2, 2], b"\x00" * 16), invalid),
        ("INT8 input", request("INT8", [1], mark), invalid),
        ("timeout_ms text", timeout, invalid),
        ("bytes_contents garbage", contents, invalid),
        (
            "too large",
            request("BYTES", [1], framed(corpus.declared_bomb("PNG", 50000, 50000))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            "unknown model",
            request("BYTES", [1], framed(png), model="no-such-model"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]


def test_hostile_grpc_requests_get_clean_errors(server: PredictorProcess) -> None:
    offset = len(server.log())
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for case, message, code in _grpc_cases():
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(message, timeout=60)
            error = caught.value
            assert error.code() == code, f"{case}: {error.code()} {error.details()}"
            details = error.details() or ""
            assert MARKER not in details, f"{case}: the payload came back: {details}"
            assert "\n" not in details, case
            assert "Traceback" not in details, case
        good = pb.ModelInferRequest(model_name="digits")
        good.inputs.add(name="image", datatype="BYTES", shape=[1])
        sample = digit_samples()[7]
        good.raw_input_contents.append(len(sample).to_bytes(4, "little") + sample)
        reply = stub.ModelInfer(good, timeout=60)
        labels = next(o for o in reply.outputs if o.name == "labels")
        assert labels.shape[0] == 1
    log = _log_since(server, offset)
    assert MARKER not in log
    assert "Traceback" not in log


def test_errors_in_one_image_name_the_image_not_its_bytes(server: PredictorProcess) -> None:
    """A multi-image request with one bad image: 400 naming its index, no payload."""
    samples = digit_samples()
    instances = [
        {"b64": base64.b64encode(samples[1]).decode()},
        {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + MARKER.encode() * 8).decode()},
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(V1, json={"instances": instances})
        check_error_body(response, 400, "one bad image among two")
        assert response.json()["error"].startswith("image 1: ")
        _valid_request_works(server, client)

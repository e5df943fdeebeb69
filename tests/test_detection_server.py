"""Detection through a real server: the shapes demo, an exported torchvision detector, digits.

One server (``demo_server``) serves all three from a folder of model directories, as
``make serve`` does, batching up to 16 with a 100 ms window so concurrent requests batch.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from PIL import Image

from models.shapes.scenes import LABELS, background, box_iou, draw, scene
from tests.support import ROOT, PredictorProcess, encode, metric

SHAPES = ROOT / "models" / "shapes"


@pytest.fixture(scope="module")
def server(demo_server: PredictorProcess) -> PredictorProcess:
    return demo_server


def known_scene(
    width: int = 3000, height: int = 2000
) -> tuple[Image.Image, list[tuple[str, list[float]]]]:
    """A flat-background scene with a circle, a square and a triangle at known places."""
    rng = np.random.default_rng(7)
    image = background(rng, width, height)
    image.paste((40, 90, 160), (0, 0, width, height))
    short = min(width, height)
    truth = [
        (
            1,
            [
                0.10 * width,
                0.15 * height,
                0.10 * width + 0.35 * short,
                0.15 * height + 0.35 * short,
            ],
        ),
        (
            2,
            [
                0.45 * width,
                0.50 * height,
                0.45 * width + 0.30 * short,
                0.50 * height + 0.30 * short,
            ],
        ),
        (
            3,
            [
                0.70 * width,
                0.10 * height,
                0.70 * width + 0.40 * short * 1.15,
                0.10 * height + 0.40 * short,
            ],
        ),
    ]
    colours = {1: (250, 200, 30), 2: (240, 240, 240), 3: (220, 40, 40)}
    for kind, box in truth:
        draw(image, kind, np.array(box), colours[kind])
    return image, [(LABELS[kind], box) for kind, box in truth]


def exif_rotated_jpeg(viewer: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG stored rotated, with the EXIF orientation that makes a viewer show ``viewer``."""
    stored = viewer.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else viewer
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def v1(server: PredictorProcess, model: str, body: bytes, query: str = "") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{model}:predict{query}",
        content=body,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )


def v1_json(server: PredictorProcess, images: list[bytes], **parameters: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "instances": [{"image_bytes": {"b64": base64.b64encode(i).decode()}} for i in images]
    }
    if parameters:
        body["parameters"] = parameters
    return httpx.post(f"{server.url}/v1/models/shapes:predict", json=body, timeout=60)


def detections(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["predictions"][0]["detections"]
    return found


def v2(server: PredictorProcess, images: list[bytes], **parameters: Any) -> dict[str, np.ndarray]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ]
    }
    if parameters:
        body["parameters"] = parameters
    response = httpx.post(f"{server.url}/v2/models/shapes/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def grpc_infer(
    server: PredictorProcess, images: list[bytes], **parameters: Any
) -> dict[str, np.ndarray]:
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    params = {
        key: pb.InferParameter(int64_param=value)
        if isinstance(value, int)
        else pb.InferParameter(string_param=str(value))
        for key, value in parameters.items()
    }
    request = pb.ModelInferRequest(
        model_name="shapes",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image", datatype="BYTES", shape=[len(images)]
            )
        ],
        raw_input_contents=[raw],
        parameters=params,
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    dtypes = {"INT32": "<i4", "FP32": "<f4", "INT64": "<i8"}
    out: dict[str, np.ndarray] = {}
    for tensor, content in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            items, offset = [], 0
            while offset < len(content):
                (length,) = struct.unpack_from("<I", content, offset)
                items.append(content[offset + 4 : offset + 4 + length].decode())
                offset += 4 + length
            out[tensor.name] = np.array(items, dtype=object).reshape(list(tensor.shape))
        else:
            values = np.frombuffer(content, dtype=dtypes[tensor.datatype])
            out[tensor.name] = values.reshape(list(tensor.shape))
    return out


def sample(index: int) -> bytes:
    return (SHAPES / "samples" / f"scene-{index}.jpg").read_bytes()


# -- the demo finds what is there ----------------------------------------------------------


def test_shapes_found_in_an_exif_rotated_3000x2000_photo(server: PredictorProcess) -> None:
    image, truth = known_scene()
    response = v1(server, "shapes", exif_rotated_jpeg(image))
    assert response.json()["predictions"][0]["image_size"] == [3000, 2000]
    found = detections(response)
    for label, box in truth:
        mine = [d for d in found if d["label"] == label]
        ious = box_iou(np.array(box), np.array([d["box"] for d in mine]).reshape(-1, 4))
        assert ious.size, (label, found)
        assert ious.max() >= 0.7, (label, box, found)
    scores = [d["score"] for d in found]
    assert scores == sorted(scores, reverse=True)


def test_the_samples_match_their_recorded_shapes(server: PredictorProcess) -> None:
    recorded = json.loads((SHAPES / "samples" / "shapes.json").read_text())
    for name, shapes in recorded.items():
        found = detections(v1(server, "shapes", (SHAPES / "samples" / name).read_bytes()))
        assert sorted(d["label"] for d in found) == sorted(s["label"] for s in shapes), name


def test_v1_v2_and_grpc_agree(server: PredictorProcess) -> None:
    images = [sample(1), sample(2), sample(3)]
    body = v1_json(server, images)
    assert body.status_code == 200, body.text
    by_v1 = body.json()["predictions"]
    by_v2 = v2(server, images)
    by_grpc = grpc_infer(server, images)
    for outputs in (by_v2, by_grpc):
        assert list(outputs) == ["num_detections", "boxes", "scores", "class_ids", "labels"]
        assert outputs["num_detections"].tolist() == [len(p["detections"]) for p in by_v1]
        for row, prediction in enumerate(by_v1):
            count = len(prediction["detections"])
            boxes = [d["box"] for d in prediction["detections"]]
            np.testing.assert_allclose(
                outputs["boxes"][row][:count], np.array(boxes).reshape(-1, 4), atol=0.01
            )
            assert list(outputs["labels"][row][:count]) == [
                d["label"] for d in prediction["detections"]
            ]
            assert outputs["class_ids"][row][count:].tolist() == [-1] * (
                outputs["boxes"].shape[1] - count
            )


# -- batching of mixed sizes -----------------------------------------------------------------


def test_a_mixed_size_burst_batches_and_answers_as_one_at_a_time(server: PredictorProcess) -> None:
    rng = np.random.default_rng(99)
    images = [encode(scene(rng).image, "JPEG", quality=90) for _ in range(30)]
    images += [encode(known_scene(1200, 900)[0], "PNG"), exif_rotated_jpeg(known_scene()[0])]
    alone = [detections(v1(server, "shapes", image)) for image in images]
    before = server.metrics()
    with ThreadPoolExecutor(32) as pool:
        burst = list(pool.map(lambda image: detections(v1(server, "shapes", image)), images))
    after = server.metrics()
    batches = metric(after, "predictor_batch_size_count", model="shapes") - metric(
        before, "predictor_batch_size_count", model="shapes"
    )
    sizes = {
        le: metric(after, "predictor_batch_size_bucket", model="shapes", le=le)
        - metric(before, "predictor_batch_size_bucket", model="shapes", le=le)
        for le in ("1.0", "2.0", "4.0", "8.0", "16.0")
    }
    print(f"\n32-way mixed-size burst: {int(batches)} batches; cumulative sizes {sizes}")
    assert batches < 32
    assert sizes["1.0"] < batches
    for one, many in zip(alone, burst, strict=True):
        assert [d["label"] for d in one] == [d["label"] for d in many]
        np.testing.assert_allclose(
            np.array([d["box"] for d in one]).reshape(-1, 4),
            np.array([d["box"] for d in many]).reshape(-1, 4),
            atol=0.5,
        )


def test_a_bad_image_in_a_burst_fails_only_its_own_request(server: PredictorProcess) -> None:
    good = sample(1)
    bodies = [good] * 6 + [good[: len(good) // 3], b"\xff\xd8not a jpeg"] + [good] * 6
    with ThreadPoolExecutor(len(bodies)) as pool:
        codes = list(pool.map(lambda body: v1(server, "shapes", body).status_code, bodies))
    assert codes == [200] * 6 + [400, 400] + [200] * 6


# -- parameters ------------------------------------------------------------------------------


def test_parameters_filter_on_every_protocol(server: PredictorProcess) -> None:
    image = exif_rotated_jpeg(known_scene()[0])
    every = detections(v1(server, "shapes", image, "?score_threshold=0.05"))
    assert len(every) >= 3
    one = detections(v1(server, "shapes", image, "?max_detections=1"))
    assert len(one) == 1
    circles = v1_json(server, [image], classes=["circle"]).json()["predictions"][0]["detections"]
    assert circles
    assert {d["label"] for d in circles} == {"circle"}
    assert v2(server, [image], classes="square,triangle")["labels"][0].tolist() == [
        d["label"]
        for d in v1_json(server, [image], classes=[2, 3]).json()["predictions"][0]["detections"]
    ]
    strict = grpc_infer(server, [image], score_threshold=0.999999, max_detections=2)
    assert strict["num_detections"].tolist()[0] <= 1


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?score_threshold=1.5", "parameters.score_threshold"),
        ("?score_threshold=-1", "parameters.score_threshold"),
        ("?max_detections=0", "parameters.max_detections"),
        ("?classes=hexagon", "parameters.classes"),
        ("?top_k=3", None),  # a classifier's parameter: not this model's, ignored
    ],
)
def test_bad_parameters_are_400_naming_them(
    server: PredictorProcess, query: str, named: str | None
) -> None:
    response = v1(server, "shapes", sample(1), query)
    if named is None:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_bad_parameters_over_v2_and_grpc(server: PredictorProcess) -> None:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(sample(1)).decode()],
            }
        ],
        "parameters": {"max_detections": 0},
    }
    response = httpx.post(f"{server.url}/v2/models/shapes/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert "max_detections" in response.json()["error"]
    with pytest.raises(grpc.RpcError) as raised:
        grpc_infer(server, [sample(1)], classes="hexagon")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "classes" in str(raised.value.details())


def test_thresholds_change_at_runtime_through_the_config_route(server: PredictorProcess) -> None:
    url = f"{server.url}/v2/models/shapes/config"
    config = httpx.get(url, timeout=10).json()
    assert config["defaults"]["score_threshold"] == 0.5
    image = sample(1)
    default = detections(v1(server, "shapes", image))
    changed = httpx.patch(url, json={"max_detections": 1}, timeout=10)
    assert changed.status_code == 200, changed.text
    try:
        assert changed.json()["defaults"]["max_detections"] == 1
        assert len(detections(v1(server, "shapes", image))) == min(1, len(default))
        bad = httpx.patch(url, json={"score_threshold": 7}, timeout=10)
        assert bad.status_code == 400
        assert "score_threshold" in bad.json()["error"]
    finally:
        httpx.patch(url, json={"max_detections": 20}, timeout=10)
    assert len(detections(v1(server, "shapes", image))) == len(default)


# -- metadata, annotate, other models --------------------------------------------------------


def test_v2_metadata_lists_exactly_the_detection_outputs(server: PredictorProcess) -> None:
    metadata = httpx.get(f"{server.url}/v2/models/shapes", timeout=10).json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("num_detections", "INT32", [-1]),
        ("boxes", "FP32", [-1, -1, 4]),
        ("scores", "FP32", [-1, -1]),
        ("class_ids", "INT64", [-1, -1]),
        ("labels", "BYTES", [-1, -1]),
    ]
    assert [i["name"] for i in metadata["inputs"]] == ["image"]


def annotate(server: PredictorProcess, model: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/models/{model}:annotate",
        content=body,
        headers={"content-type": "image/jpeg", **headers},
        timeout=60,
    )


def test_annotate_draws_on_the_viewers_image(server: PredictorProcess) -> None:
    image, _ = known_scene()
    response = annotate(server, "shapes", exif_rotated_jpeg(image))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    drawn = Image.open(io.BytesIO(response.content))
    assert drawn.format == "JPEG"
    assert drawn.size == (3000, 2000)
    original = np.asarray(image, dtype=np.int16)
    changed = np.abs(np.asarray(drawn.convert("RGB"), dtype=np.int16) - original).sum(axis=2) > 120
    assert 0.001 < changed.mean() < 0.2  # outlines and captions, not a different picture

    png = annotate(server, "shapes", sample(2), accept="image/png")
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == Image.open(io.BytesIO(sample(2))).size


def test_annotate_takes_uploads_and_parameters_and_classifiers(server: PredictorProcess) -> None:
    upload = httpx.post(
        f"{server.url}/v1/models/shapes:annotate?max_detections=1",
        files={"image": ("scene.jpg", sample(1), "image/jpeg")},
        timeout=60,
    )
    assert upload.status_code == 200, upload.text
    digit = (ROOT / "models" / "digits" / "samples" / "digit-3.png").read_bytes()
    labelled = annotate(server, "digits", digit, **{"content-type": "image/png"})
    assert labelled.status_code == 200
    written = Image.open(io.BytesIO(labelled.content))
    assert written.size == Image.open(io.BytesIO(digit)).size


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", 400), (b"\xff\xd8\xff\xe0 almost a jpeg", 400), (b"GIF89a....", 400)],
)
def test_annotate_refuses_what_predict_refuses(
    server: PredictorProcess, body: bytes, code: int
) -> None:
    response = annotate(server, "shapes", body)
    assert response.status_code == code
    assert "error" in response.json()


def test_two_images_cannot_be_annotated_at_once(server: PredictorProcess) -> None:
    response = httpx.post(
        f"{server.url}/v1/models/shapes:annotate",
        files=[
            ("a", ("a.jpg", sample(1), "image/jpeg")),
            ("b", ("b.jpg", sample(2), "image/jpeg")),
        ],
        timeout=60,
    )
    assert response.status_code == 400
    assert "one" in response.json()["error"]


@pytest.mark.parametrize(("size", "codes"), [((1, 10000), {400}), ((1, 1), {200}), ((2, 3), {200})])
def test_degenerate_images_never_500(
    server: PredictorProcess, size: tuple[int, int], codes: set[int]
) -> None:
    response = v1(server, "shapes", encode(Image.new("RGB", size, (90, 20, 20)), "PNG"))
    assert response.status_code in codes, response.text


def test_an_exported_torchvision_detector_serves(server: PredictorProcess) -> None:
    labels = httpx.get(f"{server.url}/v2/models/coco/labels", timeout=10).json()
    assert labels["labels"][:2] == ["__background__", "person"]
    response = v1(server, "coco", sample(3), "?score_threshold=0")
    found = detections(response)
    assert len(found) <= 5  # the exported max_detections
    assert all(d["label"] not in ("__background__",) for d in found)
    assert response.json()["predictions"][0]["image_size"] == list(
        Image.open(io.BytesIO(sample(3))).size
    )
    bad = v1(server, "coco", sample(3), "?classes=N/A")
    assert bad.status_code == 400


def test_detections_per_image_are_measured(server: PredictorProcess) -> None:
    before = server.metrics()
    found = detections(v1(server, "shapes", sample(1)))
    v1(server, "digits", (ROOT / "models" / "digits" / "samples" / "digit-3.png").read_bytes())
    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("predictor_detections_per_image_count", model="shapes") == 1
    # KServe's stage histograms count each request once (the Latency split panels).
    for stage in ("preprocess", "predict", "postprocess"):
        assert delta(f"request_{stage}_seconds_count", model_name="shapes") == 1, stage
    assert delta("predictor_detections_per_image_sum", model="shapes") == len(found)
    # A classifier has no detection series at all (not a row of zeros on the dashboard).
    assert not [
        key
        for key in after
        if key[0].startswith("predictor_detections") and ("model", "digits") in key[1]
    ]


TRITON_DETECT = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

target, path = sys.argv[1:3]
client = grpcclient.InferenceServerClient(target)
image = grpcclient.InferInput("image", [1], "BYTES")
image.set_data_from_numpy(np.array([open(path, "rb").read()], dtype=np.object_))
answers = {}
strict = {"score_threshold": 0.8, "max_detections": 1}
for name, parameters in (("default", {}), ("strict", strict)):
    result = client.infer("shapes", [image], parameters=parameters)
    answers[name] = {
        "count": result.as_numpy("num_detections").tolist(),
        "boxes": result.as_numpy("boxes").tolist(),
        "labels": [b.decode() for b in result.as_numpy("labels").ravel()],
    }
print(json.dumps(answers))
"""


def test_tritonclient_grpc_sends_float_parameters(server: PredictorProcess) -> None:
    """tritonclient sends a float as Triton's double_param, which KServe's proto lacks."""
    path = SHAPES / "samples" / "scene-2.jpg"
    done = subprocess.run(
        [sys.executable, "-c", TRITON_DETECT, server.grpc_target, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    reference = detections(v1(server, "shapes", path.read_bytes()))
    assert answers["default"]["count"] == [len(reference)]
    assert answers["default"]["labels"] == [d["label"] for d in reference]
    strict = detections(
        v1(server, "shapes", path.read_bytes(), "?score_threshold=0.8&max_detections=1")
    )
    assert answers["strict"]["count"] == [len(strict)]
    assert len(strict) < len(reference)


def test_the_limits_hold_for_detection(server: PredictorProcess) -> None:
    """413 for an image over --max-image-pixels (from its header), 504 past the deadline."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)  # 81 megapixels, RGB
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    for route in (":predict", ":annotate"):
        response = httpx.post(
            f"{server.url}/v1/models/shapes{route}",
            content=bomb,
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert response.status_code == 413, response.text
    late = httpx.post(
        f"{server.url}/v1/models/coco:predict",
        content=sample(1),
        headers={"content-type": "image/jpeg", "x-request-timeout-ms": "1"},
        timeout=30,
    )
    assert late.status_code == 504, late.text

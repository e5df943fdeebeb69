"""Detection, in process: image preparation and box mapping, filters, answers, task selection.

Boxes must come back in the pixels of the image as a viewer shows it, whatever resizing
and EXIF orientation happened; these tests draw a rectangle at a known place, send it
through the task's preparation, find it in the prepared pixels and map it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from predictor.errors import BadInput, TooLarge
from predictor.store.manifest import ModelStoreError, discover, read_manifest
from predictor.store.weights import load_module
from predictor.tasks import jpeg
from predictor.tasks.base import ImageInfo
from predictor.tasks.boxes import Detections, keep
from predictor.tasks.classification import Classification
from predictor.tasks.detection import Detection
from predictor.tasks.images import DecodeLimits
from predictor.tasks.registry import engine_for, task_for
from tests.support import encode

LIMITS = DecodeLimits(200_000_000)
#: For each EXIF orientation, how the stored pixels are made from the viewer's image (the
#: inverse of what a viewer applies).
STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
LABELS = ["__background__", "circle", "square", "triangle"]


def detection_spec(tmp_path: Path, **extra: Any) -> Detection:
    manifest = {
        "task": "detection",
        "arch": "shapes_detector",
        "weights": "weights.pt",
        "input": {"color": "RGB", "resize": 256, "max_size": 512},
        "labels": "labels.txt",
        **extra,
    }
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (tmp_path / "weights.pt").write_bytes(b"")
    task = task_for(read_manifest(tmp_path, "shapes"))
    assert isinstance(task, Detection)
    return task


@pytest.fixture
def task(tmp_path: Path) -> Detection:
    return detection_spec(tmp_path, score_threshold=0.4, max_detections=3)


def viewer_image(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).rectangle(box, fill=(200, 0, 0))
    return image


def stored_jpeg(viewer: Image.Image, orientation: int) -> bytes:
    """A JPEG whose pixels a viewer shows as ``viewer`` once it applies ``orientation``."""
    method = STORE[orientation]
    raw = viewer if method is None else viewer.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(raw, "JPEG", quality=95, exif=exif.tobytes())


def red_box(pixels: np.ndarray) -> np.ndarray:
    """The red rectangle's ``x1, y1, x2, y2`` in ``pixels`` (right/bottom edges exclusive)."""
    red = (pixels[:, :, 0] > 150) & (pixels[:, :, 1] < 100) & (pixels[:, :, 2] < 100)
    ys, xs = np.nonzero(red)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def mapped(box: np.ndarray, info: ImageInfo, task: Detection) -> np.ndarray:
    row = (box[None, :], np.array([0.9], np.float32), np.array([2]))
    params = {"score_threshold": 0.0, "max_detections": 10, "classes": None}
    result = keep(row, info, task.spec.labels, params)
    assert result.boxes.shape == (1, 4)
    box_found: np.ndarray = result.boxes[0]
    return box_found


@pytest.mark.parametrize("orientation", sorted(STORE))
def test_boxes_map_back_through_exif_orientation_and_resize(
    task: Detection, orientation: int
) -> None:
    truth = (900, 400, 1800, 1300)  # in the 3000x2000 image a viewer shows
    data = stored_jpeg(viewer_image(3000, 2000, truth), orientation)
    item = task.prepare(data, LIMITS)
    assert item.info is not None
    assert (item.info.width, item.info.height) == (3000, 2000)
    # Downscaled to the model's bounds (shorter side 256), never carried at full size.
    assert item.pixels.shape == (256, 384, 3)
    found = mapped(red_box(item.pixels), item.info, task)
    assert np.allclose(found, truth, atol=3000 / 384 * 1.5), (orientation, found)


def test_a_portrait_image_is_bounded_by_its_longer_side(task: Detection) -> None:
    data = encode(viewer_image(300, 1500, (50, 700, 250, 900)), "PNG")
    item = task.prepare(data, LIMITS)
    assert item.info is not None
    assert item.pixels.shape[:2] == (512, 102)  # 1500 -> 512 (max_size) before 300 -> 256
    found = mapped(red_box(item.pixels), item.info, task)
    assert np.allclose(found, (50, 700, 250, 900), atol=1500 / 512 * 1.5)


def test_a_small_image_is_enlarged_as_the_network_would(task: Detection) -> None:
    item = task.prepare(encode(viewer_image(160, 120, (10, 10, 50, 50)), "PNG"), LIMITS)
    assert item.pixels.shape == (256, 341, 3)
    assert item.info == ImageInfo(160, 120, 341, 256)
    found = mapped(red_box(item.pixels), item.info, task)
    assert np.allclose(found, (10, 10, 51, 51), atol=1)


def test_boxes_are_clipped_to_the_image(task: Detection) -> None:
    info = ImageInfo(1000, 500, 512, 256)
    found = mapped(np.array([-10, -3, 600, 300], np.float32), info, task)
    assert found.tolist() == [0, 0, 1000, 500]


@pytest.mark.parametrize("size", [(1, 10000), (10000, 2), (3, 2000)])
def test_images_too_thin_to_detect_in_are_bad_input(task: Detection, size: tuple[int, int]) -> None:
    with pytest.raises(BadInput, match="too thin"):
        task.prepare(encode(Image.new("RGB", size, (9, 9, 9)), "PNG"), LIMITS)


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (1, 2)])
def test_tiny_images_are_enlarged_to_the_network_size(
    task: Detection, size: tuple[int, int]
) -> None:
    item = task.prepare(encode(Image.new("RGB", size, (9, 9, 9)), "PNG"), LIMITS)
    assert min(item.pixels.shape[:2]) == 256


def test_the_pixel_limit_holds_for_detection(task: Detection) -> None:
    data = encode(Image.new("RGB", (2000, 2000)), "PNG")
    with pytest.raises(TooLarge):
        task.prepare(data, DecodeLimits(1_000_000))


def test_a_tensor_input_is_refused(task: Detection) -> None:
    with pytest.raises(BadInput, match="encoded images"):
        task.prepare(np.zeros((3, 8, 8), np.float32), LIMITS)


def rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [7, 7, 9, 9]], np.float32)
    scores = np.array([0.3, 0.95, 0.6, 0.8], np.float32)
    return boxes, scores, np.array([1, 2, 3, 1])


def test_filters_sort_by_score_and_keep_the_requests_settings(task: Detection) -> None:
    info = ImageInfo(20, 20, 20, 20)
    every = {"score_threshold": 0.0, "max_detections": 10, "classes": None}
    result = keep(rows(), info, LABELS, every)
    assert result.scores.tolist() == pytest.approx([0.95, 0.8, 0.6, 0.3])
    assert result.labels == ("square", "circle", "triangle", "circle")
    strict = keep(rows(), info, LABELS, {**every, "score_threshold": 0.7})
    assert strict.labels == ("square", "circle")
    top = keep(rows(), info, LABELS, {**every, "max_detections": 1})
    assert top.labels == ("square",)
    circles = keep(rows(), info, LABELS, {**every, "classes": task.class_ids(["circle"])})
    assert circles.labels == ("circle", "circle")
    assert circles.scores.tolist() == pytest.approx([0.8, 0.3])


def test_v2_rows_are_padded_to_the_longest(task: Detection) -> None:
    info = ImageInfo(20, 20, 20, 20)
    params = {"score_threshold": 0.0, "max_detections": 10, "classes": None}
    full = keep(rows(), info, LABELS, params)
    empty = keep(rows(), info, LABELS, {**params, "score_threshold": 0.99})
    outputs = task.v2_outputs([full, empty])
    assert list(outputs) == list(task.outputs)
    assert outputs["num_detections"][1].tolist() == [4, 0]
    assert outputs["boxes"][1].shape == (2, 4, 4)
    assert outputs["boxes"][1][1].tolist() == [[0.0] * 4] * 4
    assert outputs["class_ids"][1][1].tolist() == [-1] * 4
    assert outputs["labels"][1][1].tolist() == [b""] * 4
    assert outputs["scores"][1][0].tolist() == pytest.approx([0.95, 0.8, 0.6, 0.3])
    none = task.v2_outputs([empty])
    assert none["boxes"][1].shape == (1, 0, 4)


def test_v1_answer_shape(task: Detection) -> None:
    result = keep(rows(), ImageInfo(40, 20, 20, 10), LABELS, task.defaults())
    (prediction,) = task.encode_v1([result])["predictions"]
    assert prediction["image_size"] == [40, 20]
    assert [d["label"] for d in prediction["detections"]] == ["square", "circle", "triangle"]
    first = prediction["detections"][0]
    assert first == {
        "box": [10.0, 10.0, 40.0, 20.0],
        "score": pytest.approx(0.95),
        "label": "square",
        "class_id": 2,
    }


def test_defaults_come_from_the_manifest(task: Detection) -> None:
    assert task.defaults() == {"score_threshold": 0.4, "max_detections": 3, "classes": None}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"score_threshold": 1.5}, "parameters.score_threshold"),
        ({"score_threshold": -0.1}, "parameters.score_threshold"),
        ({"score_threshold": "nan"}, "parameters.score_threshold"),
        ({"score_threshold": True}, "parameters.score_threshold"),
        ({"max_detections": 0}, "parameters.max_detections"),
        ({"max_detections": 1001}, "parameters.max_detections"),
        ({"classes": ["hexagon"]}, "unknown class 'hexagon'"),
        ({"classes": [0]}, "unknown class 0"),
        ({"classes": "__background__"}, "unknown class"),
        ({"classes": [7]}, "unknown class 7"),
        ({"classes": {"a": 1}}, "parameters.classes"),
    ],
)
def test_bad_parameters_name_the_parameter(
    task: Detection, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        task.check_parameters(values)


def test_parameters_accept_text_as_v2_and_forms_send_it(task: Detection) -> None:
    checked = task.check_parameters(
        {"score_threshold": "0.25", "max_detections": "7", "classes": "square, 3"}
    )
    assert checked == {"score_threshold": 0.25, "max_detections": 7, "classes": (2, 3)}


def test_the_manifest_picks_the_task(tmp_path: Path) -> None:
    assert isinstance(detection_spec(tmp_path), Detection)
    digits = Path(__file__).resolve().parent.parent / "models" / "digits"
    assert isinstance(task_for(read_manifest(digits, "digits")), Classification)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ModelStoreError, match="score_threshold"):
        detection_spec(bad, score_threshold=2)
    with pytest.raises(ModelStoreError, match="max_size"):
        detection_spec(bad, input={"color": "RGB", "resize": 600, "max_size": 300})


def test_results_count_detections(task: Detection) -> None:
    empty = Detections(
        np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), (), (5, 5)
    )
    full = keep(rows(), ImageInfo(20, 20, 20, 20), LABELS, task.defaults())
    assert task.counts([empty, full]) == [0, 3]


def test_make_serve_serves_both_demo_models() -> None:
    root = Path(__file__).resolve().parent.parent
    specs = {spec.name: spec.task for spec in discover(root / "models")}
    assert specs == {"digits": "classification", "shapes": "detection"}


def test_a_12_megapixel_jpeg_is_never_decoded_at_full_size(
    task: Detection, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[tuple[int, int]] = []
    real = jpeg.decode

    def spy(*args: Any) -> Image.Image:
        image = real(*args)
        decoded.append(image.size)
        return image

    monkeypatch.setattr(jpeg, "decode", spy)
    item = task.prepare(stored_jpeg(viewer_image(4000, 3000, (100, 100, 900, 900)), 1), LIMITS)
    assert item.pixels.shape == (256, 341, 3)
    (size,) = decoded  # libjpeg scales by 1/8 steps: at most twice the target a side
    assert size[0] <= 2 * 341
    assert size[1] <= 2 * 256


CUDA = torch.cuda.is_available()


def shapes_engine(device: str, dtype: str = "float32") -> tuple[Detection, Any]:
    root = Path(__file__).resolve().parent.parent / "models" / "shapes"
    spec = read_manifest(root, "shapes")
    return Detection(spec), engine_for(spec, load_module(spec), device, dtype, 8)


def test_the_demo_detector_answers_alike_alone_and_in_a_mixed_batch() -> None:
    """In process: one batch of five sizes gives each image what it gets alone."""
    from models.shapes.scenes import scene

    task, engine = shapes_engine("cpu")
    rng = np.random.default_rng(5)
    items = [task.prepare(encode(scene(rng).image, "PNG"), LIMITS) for _ in range(5)]
    assert len({item.pixels.shape for item in items}) > 2
    params = task.defaults()
    frames = [task.batch_input(item, params) for item in items]
    together = task.postprocess(engine.run(frames), items, params)
    for index, item in enumerate(items):
        (alone,) = task.postprocess(engine.run([frames[index]]), [item], params)
        assert alone.labels == together[index].labels
        np.testing.assert_allclose(alone.boxes, together[index].boxes, atol=0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cuda_detection_matches_cpu(dtype: str) -> None:
    from models.shapes.scenes import scene

    task, cpu = shapes_engine("cpu")
    _, gpu = shapes_engine("cuda:0", dtype)
    rng = np.random.default_rng(6)
    items = [task.prepare(encode(scene(rng).image, "JPEG"), LIMITS) for _ in range(8)]
    params = task.defaults()
    frames = [task.batch_input(item, params) for item in items]
    expected = task.postprocess(cpu.run(frames), items, params)
    found = task.postprocess(gpu.run(frames), items, params)
    for mine, reference in zip(found, expected, strict=True):
        assert mine.labels == reference.labels
        np.testing.assert_allclose(
            mine.boxes, reference.boxes, atol=2.0 if dtype != "float32" else 0.5
        )

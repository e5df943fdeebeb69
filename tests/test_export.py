"""`gpu-predictor export`: model directories for torchvision architectures, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.cli import main
from predictor.store.manifest import read_manifest
from predictor.store.weights import load_module
from predictor.tasks.registry import engine_for
from tests.support import ROOT


def export(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "predictor", "export", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def export_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``main(["export", ...])`` in this process (no torch import per call): (code, stderr)."""
    try:
        code = main(["export", *args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err


def test_random_weights_state_dict_export_serves_imagenet_preprocessing(tmp_path: Path) -> None:
    out = tmp_path / "resnet18"
    result = export("resnet18", "--weights", "none", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote weights.pt" in result.stderr  # progress is shown
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["arch"] == "resnet18"
    assert manifest["input"]["resize"] == 256
    assert manifest["input"]["crop"] == 224
    assert manifest["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    spec = read_manifest(out, "resnet18")
    assert len(spec.labels) == 1000
    assert spec.labels[0] == "tench"
    engine = engine_for(spec, load_module(spec), "cpu", "float32", 2, jit=False)
    probs = np.stack(engine.infer([np.zeros((224, 224, 3), np.uint8)] * 2))
    assert probs.shape == (2, 1000)


def test_weights_file_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, again = tmp_path / "first", tmp_path / "again"
    assert export_in_process(capsys, "resnet18", "--weights", "none", "--output", str(out))[0] == 0
    code, err = export_in_process(
        capsys, "resnet18", "--weights", str(out / "weights.pt"), "--output", str(again)
    )
    assert code == 0, err
    first = torch.load(out / "weights.pt", weights_only=True)
    second = torch.load(again / "weights.pt", weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_exported_program_has_a_dynamic_batch_dimension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mobilenet"
    args = ("mobilenet_v3_small", "--weights", "none", "--format", "exported-program")
    code, err = export_in_process(capsys, *args, "--output", str(out))
    assert code == 0, err
    spec = read_manifest(out, "mobilenet")
    assert spec.program is not None
    assert spec.arch is None
    engine = engine_for(spec, load_module(spec), "cpu", "float32", 5, jit=False)
    for batch in (1, 5):
        rows = engine.infer([np.zeros((224, 224, 3), np.uint8)] * batch)
        assert np.stack(rows).shape == (batch, 1000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("not_a_net", "--weights", "none"), "unknown architecture 'not_a_net'"),
        (("resnet18", "--weights", "/nonexistent.pt"), "no such file"),
    ],
)
def test_export_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, err = export_in_process(capsys, *args, "--output", str(tmp_path / "out"))
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_mismatching_weights_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    code, err = export_in_process(
        capsys, "resnet18", "--weights", str(bad), "--output", str(tmp_path / "o")
    )
    assert code == 2
    assert "does not fit the architecture" in err


def test_pretrained_weights_download_or_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DEFAULT downloads where the network allows; without one it must fail with a clear line."""
    code, err = export_in_process(
        capsys, "resnet18", "--weights", "DEFAULT", "--output", str(tmp_path / "o")
    )
    if code == 0:
        assert read_manifest(tmp_path / "o", "r").labels[0] == "tench"
    else:
        assert code == 2
        assert "cannot download ResNet18_Weights" in err
        assert "Traceback" not in err


#: Every torchvision detector the export issue names, and the size bounds each resizes to.
DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (320, 640),
    "fasterrcnn_mobilenet_v3_large_fpn": (800, 1333),
    "fasterrcnn_resnet50_fpn_v2": (800, 1333),
    "retinanet_resnet50_fpn_v2": (800, 1333),
    "fcos_resnet50_fpn": (800, 1333),
    "ssdlite320_mobilenet_v3_large": (320, 320),
    "ssd300_vgg16": (300, 300),
}


@pytest.mark.parametrize("arch", DETECTORS)
def test_every_torchvision_detector_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arch: str
) -> None:
    out = tmp_path / arch
    code, err = export_in_process(
        capsys, arch, "--weights", "none", "--output", str(out),
        "--score-threshold", "0.3", "--max-detections", "7",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["task"] == "detection"
    assert (manifest["input"]["resize"], manifest["input"]["max_size"]) == DETECTORS[arch]
    assert (manifest["score_threshold"], manifest["max_detections"]) == (0.3, 7)
    spec = read_manifest(out, arch)
    # COCO's category list from the weights enum, slots included: index = the class id.
    assert len(spec.labels) == 91
    assert spec.labels[:2] == ("__background__", "person")
    assert spec.labels.count("N/A") == 10
    load_module(spec)  # the state dict fits the architecture


def test_detectors_export_only_as_state_dicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fcos"
    code, err = export_in_process(
        capsys, "fcos_resnet50_fpn", "--weights", "none", "--output", str(out),
        "--format", "exported-program",
    )  # fmt: skip
    assert code == 2
    assert "state-dict" in err
    assert not (out / "model.json").exists()
    code, err = export_in_process(
        capsys, "ssd300_vgg16", "--weights", "none", "--output", str(out),
        "--score-threshold", "1.5",
    )  # fmt: skip
    assert code == 2
    assert "--score-threshold" in err

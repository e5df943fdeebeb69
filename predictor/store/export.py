"""``gpu-predictor export``: a model directory for a torchvision architecture.

Classifiers (resnet50...) and detectors (fasterrcnn_resnet50_fpn_v2, retinanet, fcos,
ssd...). Preprocessing (a classifier's resize, crop, mean, std; the size bounds a detector
resizes to) and labels come from torchvision's weights enum (``ResNet50_Weights.DEFAULT``
and friends) and the built network, which are known without downloading anything; only
``--weights DEFAULT`` downloads (with a progress bar) where the network allows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from predictor.store import archs
from predictor.store.manifest import MANIFEST
from predictor.store.spec import Thresholds

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """The export cannot be done; the message says why."""


def _step(message: str) -> float:
    log.info("  %s", message)
    return time.perf_counter()


def export_model(
    arch: str,
    output: Path,
    weights: str,
    fmt: str = "state-dict",
    top_k: int = 5,
    thresholds: Thresholds | None = None,
) -> Path:
    """Write ``model.json``, weights and ``labels.txt`` for ``arch`` into ``output``.

    Args:
        arch: a torchvision classification architecture (resnet18, efficientnet_b0...) or
            detection architecture (fasterrcnn_mobilenet_v3_large_fpn, ssd300_vgg16...).
        output: the model directory to create (may exist; files are overwritten).
        weights: ``DEFAULT`` (pretrained, downloaded), ``none`` (random) or a state-dict file.
        fmt: ``state-dict`` or ``exported-program`` (classifiers only).
        top_k: a classifier's default number of classes returned.
        thresholds: a detector's default score threshold and detection count.

    Returns:
        The model directory.

    Raises:
        ExportError: unknown architecture, unreadable or mismatching weights, failed download.
    """
    import torchvision.models

    detector = arch in archs.torchvision_detectors()
    if not detector and arch not in archs.torchvision_classifiers():
        some = ", ".join(archs.torchvision_classifiers()[:4] + archs.torchvision_detectors()[:4])
        raise ExportError(f"unknown architecture {arch!r}; torchvision has e.g. {some}, ...")
    if detector and fmt != "state-dict":
        raise ExportError(
            "detectors export as --format state-dict only (their forward is data-dependent)"
        )
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    categories: list[str] = list(enum.meta["categories"])
    log.info("exporting %s (%s weights) to %s", arch, weights, output)

    start = _step(f"building {arch} ({len(categories)} classes)")
    module = archs.build(arch)
    if weights == "DEFAULT":
        _step(f"downloading {enum} (cached under $TORCH_HOME)")
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:  # no network, proxy, hash mismatch
            raise ExportError(f"cannot download {enum}: {exc}; use --weights FILE or none") from exc
        module.load_state_dict(state)
    elif weights == "none":
        _step("random weights (for speed measurements; predictions are meaningless)")
    else:
        _load_weights_file(Path(weights), module)
    module.eval()

    output.mkdir(parents=True, exist_ok=True)
    if detector:
        manifest = _detector_manifest(module, thresholds or Thresholds())
    else:
        manifest = _classifier_manifest(enum, top_k)
    manifest["source"] = {
        "arch": arch,
        "weights": weights if weights in ("DEFAULT", "none") else "file",
    }
    if fmt == "exported-program":
        _step("tracing with torch.export (dynamic batch dimension)")
        program = _export_program(module, int(manifest["input"]["crop"]))
        torch.export.save(program, str(output / "model.pt2"))
        manifest["program"] = "model.pt2"
        written = output / "model.pt2"
    else:
        manifest["arch"] = arch
        manifest["weights"] = "weights.pt"
        written = output / "weights.pt"
        torch.save(module.state_dict(), str(written))
    (output / "labels.txt").write_text("\n".join(categories) + "\n", encoding="utf-8")
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    size_mb = written.stat().st_size / 1e6
    _step(f"wrote {written.name} ({size_mb:.1f} MB), labels.txt, {MANIFEST}")
    log.info(
        "done in %.1f s: gpu-predictor serve --model-dir %s", time.perf_counter() - start, output
    )
    return output


def _classifier_manifest(enum: Any, top_k: int) -> dict[str, Any]:
    """Resize, crop, mean and std from the weights enum's preset transforms."""
    preset = enum.transforms()
    return {
        "task": "classification",
        "input": {
            "color": "RGB",
            "resize": int(preset.resize_size[0]),
            "crop": int(preset.crop_size[0]),
            "mean": [float(v) for v in preset.mean],
            "std": [float(v) for v in preset.std],
        },
        "labels": "labels.txt",
        "top_k": top_k,
    }


def _detector_manifest(module: nn.Module, thresholds: Thresholds) -> dict[str, Any]:
    """The size bounds the detector resizes to (its own transform), and the thresholds.

    Normalisation happens inside torchvision's detectors, so there is no mean/std here.
    Fixed-size detectors (SSD) stretch every image to their size: both bounds are that.
    """
    transform: Any = getattr(module, "transform", None)
    if transform is None:
        raise ExportError("not a torchvision detector: it has no resizing transform")
    fixed = getattr(transform, "fixed_size", None)
    if fixed:
        shorter, longer = min(fixed), max(fixed)
    else:
        shorter, longer = int(transform.min_size[-1]), int(transform.max_size)
    return {
        "task": "detection",
        "input": {"color": "RGB", "resize": int(shorter), "max_size": int(longer)},
        "labels": "labels.txt",
        "score_threshold": thresholds.score_threshold,
        "max_detections": thresholds.max_detections,
    }


def _load_weights_file(path: Path, module: nn.Module) -> None:
    if not path.is_file():
        raise ExportError(f"--weights {path}: no such file (use DEFAULT, none or a file)")
    _step(f"loading {path} with weights_only=True")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: dict[str, torch.Tensor] = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except Exception as exc:
        raise ExportError(f"--weights {path} does not fit the architecture: {exc}") from exc


def _export_program(module: nn.Module, crop: int) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.zeros(2, 3, crop, crop)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))

"""Model directories: find them and read their manifest (weights: :mod:`.weights`).

A model directory holds ``model.json`` (the manifest) and the files it names::

    {
      "task": "classification",
      "arch": "resnet18",                  # or "program": "model.pt2" (torch.export)
      "arch_kwargs": {"num_classes": 1000},
      "weights": "weights.pt",             # state dict: .pt/.pth or .safetensors
      "input": {"color": "RGB", "resize": 256, "crop": 224,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
      "labels": "labels.txt",              # one label per line
      "top_k": 5,
      "version": "1",                      # the version the v2 routes report (default "1")
      "jit": true                          # may run as a TorchScript trace (default)
    }

A detector (``"task": "detection"``) names the size bounds its network resizes to instead of
a crop, and its default thresholds::

    {
      "task": "detection",
      "arch": "fasterrcnn_mobilenet_v3_large_320_fpn",
      "arch_kwargs": {"num_classes": 91},
      "weights": "weights.pt",
      "input": {"color": "RGB", "resize": 320, "max_size": 640},  # shorter / longer side
      "labels": "labels.txt",              # index = the network's class id
      "score_threshold": 0.5,
      "max_detections": 100
    }

Files named by a manifest must stay inside the model directory; weights load only through
``torch.load(weights_only=True)``, safetensors, or ``torch.export.load`` with every
unpickling inside it forced through the weights-only unpickler: never plain pickle.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from predictor.store.spec import (
    COLORS,
    DEFAULT_VERSION,
    MAX_DETECTIONS,
    TASKS,
    InputSpec,
    ModelSpec,
    Thresholds,
)

MANIFEST = "model.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class ModelStoreError(ValueError):
    """A model directory or its manifest is unusable; the message says which and why."""


def scan(model_dir: Path, model_name: str | None = None) -> dict[str, Path]:
    """The model directories under ``model_dir`` by served name, without reading them.

    ``model_dir`` is either one model directory (it holds ``model.json``; KServe mounts it at
    ``/mnt/models``), served as ``model_name`` or under its own name, or a folder of model
    directories, each served under its directory name (``model_name`` applies only when the
    folder holds exactly one).

    Args:
        model_dir: the directory to search.
        model_name: served name when exactly one model is found.

    Returns:
        Directories by name, sorted by name; empty when none is there (yet).

    Raises:
        ModelStoreError: ``model_name`` is given but several models are found.
    """
    if (model_dir / MANIFEST).is_file():
        return {model_name or model_dir.resolve().name: model_dir}
    try:
        candidates = sorted(p for p in model_dir.iterdir() if (p / MANIFEST).is_file())
    except OSError as exc:
        raise ModelStoreError(f"cannot list {model_dir}: {exc.strerror}") from None
    if model_name is not None and len(candidates) > 1:
        raise ModelStoreError(
            f"--model-name {model_name!r} needs a single model, but {model_dir} holds "
            f"{len(candidates)}: {', '.join(p.name for p in candidates)}"
        )
    if model_name is not None and candidates:
        return {model_name: candidates[0]}
    return {p.name: p for p in candidates}


def discover(model_dir: Path, model_name: str | None = None) -> list[ModelSpec]:
    """Find and read every model under ``model_dir`` (see :func:`scan`).

    Args:
        model_dir: the directory to search.
        model_name: served name when exactly one model is found.

    Returns:
        The models, sorted by name.

    Raises:
        ModelStoreError: no model found, a manifest is invalid, or names clash.
    """
    found = scan(model_dir, model_name)
    if not found:
        raise ModelStoreError(
            f"no model found in {model_dir}: expected {MANIFEST} there or in its subdirectories"
        )
    return [read_manifest(path, name) for name, path in found.items()]


def read_manifest(directory: Path, name: str) -> ModelSpec:
    """Parse and validate ``directory/model.json``.

    Args:
        directory: the model directory.
        name: the name it will be served under.

    Returns:
        The validated spec.

    Raises:
        ModelStoreError: the manifest is missing, malformed, or names unsafe paths.
    """
    if not _NAME_RE.match(name):
        raise ModelStoreError(
            f"model name {name!r} is not usable in a URL: letters, digits, '_', '.', '-' only"
        )
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelStoreError(f"{path}: cannot read manifest ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelStoreError(f"{path}: manifest must be a JSON object")
    try:
        return _parse(directory, name, raw)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelStoreError):
            raise ModelStoreError(f"{path}: {exc}") from None
        raise ModelStoreError(f"{path}: invalid manifest ({type(exc).__name__}: {exc})") from None


def _input_spec(inp: dict[str, Any], task: str) -> InputSpec:
    """The manifest's ``input``: colour, resize, crop (max_size for detection), mean/std."""
    color = inp.get("color", "RGB")
    if color not in COLORS:
        raise ModelStoreError(f"input.color must be one of {COLORS}")
    max_size = None
    if task == "detection":
        max_size = int(inp["max_size"]) if inp.get("max_size") is not None else None
        if int(inp["resize"]) < 1 or (max_size is not None and max_size < int(inp["resize"])):
            raise ModelStoreError("input.resize must be >= 1 and input.max_size >= resize")
        inp = {**inp, "crop": int(inp["resize"])}
    crop_raw = inp["crop"]
    crop = (int(crop_raw), int(crop_raw)) if isinstance(crop_raw, int) else tuple(crop_raw)
    if len(crop) != 2 or min(crop) < 1:
        raise ModelStoreError("input.crop must be a positive int or [height, width]")
    resize = int(inp.get("resize", min(crop)))
    channels = 3 if color == "RGB" else 1
    mean = tuple(float(v) for v in inp.get("mean", [0.0] * channels))
    std = tuple(float(v) for v in inp.get("std", [1.0] * channels))
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ModelStoreError(f"input.mean/std need {channels} values, std > 0")
    background = int(inp.get("background", 255))
    if not 0 <= background <= 255 or resize < min(crop):
        raise ModelStoreError("input.background must be 0..255 and input.resize >= crop")
    crop_hw = (int(crop[0]), int(crop[1]))
    return InputSpec(color, resize, crop_hw, mean, std, background, max_size)


def _thresholds(raw: dict[str, Any]) -> Thresholds:
    """A detector's ``score_threshold`` (0..1) and ``max_detections`` (1..1000)."""
    score = raw.get("score_threshold", 0.5)
    count = raw.get("max_detections", 100)
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ModelStoreError("score_threshold must be a number from 0 to 1")
    if isinstance(count, bool) or not isinstance(count, int):
        raise ModelStoreError(f"max_detections must be an integer from 1 to {MAX_DETECTIONS}")
    try:
        return Thresholds(float(score), count)
    except ValueError as exc:
        raise ModelStoreError(str(exc)) from None


def _parse(directory: Path, name: str, raw: dict[str, Any]) -> ModelSpec:
    task = raw.get("task", "classification")
    if task not in TASKS:
        raise ModelStoreError(f"task {task!r} is not supported (supported: {', '.join(TASKS)})")
    spec_input = _input_spec(raw["input"], task)
    labels_path = safe_path(directory, raw["labels"], "labels")
    labels = tuple(
        line.strip()
        for line in labels_path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    )
    if not labels:
        raise ModelStoreError(f"labels file {raw['labels']} is empty")
    top_k = int(raw.get("top_k", 5))
    if top_k < 1:
        raise ModelStoreError("top_k must be >= 1")

    version = raw.get("version", DEFAULT_VERSION)
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ModelStoreError("version must be text: letters, digits, '_', '.', '-' (1-32)")
    arch, program, weights = raw.get("arch"), raw.get("program"), raw.get("weights")
    if (arch is None) == (program is None):
        raise ModelStoreError("set exactly one of 'arch' (with 'weights') or 'program'")
    if arch is not None and weights is None:
        raise ModelStoreError("'arch' needs 'weights' (a state dict file)")
    return ModelSpec(
        name=name,
        directory=directory,
        task=task,
        input=spec_input,
        labels=labels,
        top_k=min(top_k, len(labels)),
        version=version,
        arch=arch,
        arch_kwargs=dict(raw.get("arch_kwargs", {})),
        weights=safe_path(directory, weights, "weights") if weights is not None else None,
        program=safe_path(directory, program, "program") if program is not None else None,
        jit=_flag(raw.get("jit", True), "jit"),
        thresholds=_thresholds(raw) if task == "detection" else Thresholds(),
    )


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ModelStoreError(f"{key} must be true or false")
    return value


def safe_path(directory: Path, relative: object, what: str) -> Path:
    """Resolve a manifest path, refusing anything that leaves the model directory.

    Args:
        directory: the model directory.
        relative: the path as written in the manifest.
        what: the manifest key, for the error message.

    Returns:
        The resolved path of an existing file inside ``directory``.

    Raises:
        ModelStoreError: the path is absolute, escapes the directory (also through a
            symbolic link), or does not exist.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise ModelStoreError(f"{what} must be a relative file path")
    candidate = Path(relative)
    root = directory.resolve()
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root):
        raise ModelStoreError(f"{what} path {relative!r} escapes the model directory")
    if not resolved.is_file():
        raise ModelStoreError(f"{what} file {relative!r} does not exist")
    return resolved

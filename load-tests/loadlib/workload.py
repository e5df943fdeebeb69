"""What every benchmarked server runs: the same model directories, the same preprocessing.

* :func:`prepare_models` writes random-weight model directories with the predictor's own
  exporter (``gpu-predictor export ARCH --weights none``); ``mobilenet_v3_small-96`` gets a
  96-pixel resize and crop in its manifest (an overhead-bound model); ``shapes`` is the
  demo detector of this repository, served as it is.
* :class:`PerRequestClassifier` is what the peers without batching run per request:
  :func:`predictor.tasks.classification.decode_image` (the same decode, resize and crop as
  ours), then the same torch module, one image at a time, normalised the way tutorials do it.
* :func:`predictions` is the shared answer shape: ``{"predictions": [[{label, score,
  class_id}, ...]]}``, as ours returns for v1.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadlib.corpus import CACHE


@dataclass(frozen=True)
class ModelChoice:
    """A benchmark model: a torchvision architecture at an input size.

    Attributes:
        name: the served name (and directory name).
        arch: torchvision architecture (a classifier or a detector).
        size: resize and crop (``None``: the architecture's preset, 256 -> 224).
        demo: a model directory of this repository to serve as it is, instead of an export.
    """

    name: str
    arch: str
    size: int | None = None
    demo: str | None = None


MODELS: dict[str, ModelChoice] = {
    m.name: m
    for m in (
        ModelChoice("resnet18", "resnet18"),
        ModelChoice("resnet50", "resnet50"),
        ModelChoice("mobilenet_v3_small-96", "mobilenet_v3_small", 96),
        ModelChoice("shapes", "shapes_detector", demo="models/shapes"),
        ModelChoice("fasterrcnn_mobilenet_320", "fasterrcnn_mobilenet_v3_large_320_fpn"),
    )
}
MAX_PIXELS = 40_000_000


def prepare_models(names: Sequence[str], root: Path = CACHE / "models") -> dict[str, Path]:
    """Model directories for ``names`` under ``root`` (written once, then reused).

    Random weights (seed 0): the benchmark measures speed, not accuracy.
    """
    dirs = {}
    for name in names:
        choice = MODELS[name]
        if choice.demo is not None:
            dirs[name] = CACHE.parent.parent / choice.demo
            continue
        folder = root / name
        manifest = folder / "model.json"
        if not manifest.is_file():
            import torch

            from predictor.store.export import export_model

            torch.manual_seed(0)
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            export_model(choice.arch, partial, "none")
            if choice.size is not None:
                written = partial / "model.json"
                raw = json.loads(written.read_text(encoding="utf-8"))
                raw["input"]["resize"] = choice.size
                raw["input"]["crop"] = choice.size
                written.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
        dirs[name] = folder
    return dirs


def predictions(rows: np.ndarray, labels: Sequence[str], k: int) -> dict[str, Any]:
    """The v1 answer for probability rows: top-k labels, scores and class ids per image."""
    from predictor.tasks.classification import top_k

    out = []
    for row in rows:
        best = top_k(row, labels, k)
        out.append(
            [
                {"label": label, "score": float(score), "class_id": int(cid)}
                for label, score, cid in zip(best.labels, best.scores, best.class_ids, strict=True)
            ]
        )
    return {"predictions": out}


class PerRequestClassifier:
    """Decode one image, run the module on it, answer top-k: no batching, no pipelining.

    Args:
        model_dir: a model directory.
        device: ``cpu`` or ``cuda[:N]``.
        dtype: ``auto`` (float16 on CUDA), ``float32``, ``float16`` or ``bfloat16``.
    """

    def __init__(self, model_dir: Path, device: str = "cpu", dtype: str = "auto") -> None:
        import torch

        from predictor.runtime.devices import resolve_dtype
        from predictor.store.manifest import discover
        from predictor.store.weights import load_module

        self.spec = discover(model_dir)[0]
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, device)
        self.module = load_module(self.spec).to(self.device, dtype=self.dtype)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(self.spec.input.mean, device=self.device).view(shape)
        self.std = torch.tensor(self.spec.input.std, device=self.device).view(shape)

    def pixels(self, data: bytes) -> np.ndarray:
        """Decode, resize and crop (the predictor's own function)."""
        from predictor.tasks.classification import decode_image

        return decode_image(data, self.spec.input, MAX_PIXELS)

    def probabilities(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Normalise ``uint8`` HWC images and run the module; one probability row each."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.stack(batch)).to(self.device).permute(0, 3, 1, 2)
            x = ((x.float() / 255.0 - self.mean) / self.std).to(self.dtype)
            probs: np.ndarray = self.module(x).float().softmax(dim=1).cpu().numpy()
        return probs

    def predict(self, images: Sequence[bytes]) -> dict[str, Any]:
        """The v1 answer for encoded images, each run on its own."""
        rows = np.concatenate([self.probabilities([self.pixels(d)]) for d in images])
        return predictions(rows, self.spec.labels, self.spec.top_k)

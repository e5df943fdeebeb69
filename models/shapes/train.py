"""Train the demo detector: circles, squares and triangles on random backgrounds.

Run from the repository root::

    uv run python models/shapes/train.py            # ~9 min on 2 CPU cores

Scenes are drawn on the fly (``scenes.py``: 160-640 px, 1-4 shapes of 15-45% of the short
side, random colours and backgrounds), so every step sees new images. The network is
torchvision's FCOS head on a small backbone defined in this project
(``predictor.store.archs.shapes_detector``), trained from scratch with AdamW for a fixed time
(``--minutes``; warm-up, then cosine decay).
The held-out mAP@0.5 is measured through the serving path itself: 300 new scenes, each
encoded as JPEG or PNG, prepared by ``predictor.tasks.detection`` and run by the server's
engine in batches of 8, boxes mapped back to the image's pixels. Writes ``weights.pt`` (a
state dict, loaded with ``weights_only=True``), ``labels.txt``, ``model.json`` and sample
images into ``samples/``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for models.shapes
from models.shapes.scenes import LABELS, Scene, mean_ap, scene  # noqa: E402
from predictor.store.archs import shapes_detector  # noqa: E402
from predictor.store.manifest import read_manifest  # noqa: E402
from predictor.store.weights import load_module  # noqa: E402
from predictor.tasks.images import DecodeLimits  # noqa: E402
from predictor.tasks.registry import engine_for, task_for  # noqa: E402

BATCH = 8
MIN_SIZE, MAX_SIZE = 192, 384
TARGET_MAP = 0.90
HELD_OUT = 300
MANIFEST = {
    "task": "detection",
    "arch": "shapes_detector",
    "arch_kwargs": {"num_classes": len(LABELS), "min_size": MIN_SIZE, "max_size": MAX_SIZE},
    "weights": "weights.pt",
    "input": {"color": "RGB", "resize": MIN_SIZE, "max_size": MAX_SIZE},
    "labels": "labels.txt",
    "score_threshold": 0.5,
    "max_detections": 20,
}


def tensor(image: object) -> torch.Tensor:
    """An RGB PIL image as a float ``[3, H, W]`` tensor in 0..1."""
    pixels = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


def encode(item: Scene, index: int) -> bytes:
    """Alternate JPEG (quality 90) and PNG, as clients send both."""
    out = io.BytesIO()
    if index % 2:
        item.image.save(out, "PNG")
    else:
        item.image.save(out, "JPEG", quality=90)
    return out.getvalue()


def train(minutes: float, peak_lr: float = 1e-3) -> torch.nn.Module:
    """AdamW, warm-up then cosine decay over a fixed time, scenes drawn fresh each step."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = shapes_detector(len(LABELS), MIN_SIZE, MAX_SIZE).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=peak_lr, weight_decay=1e-4)
    budget = minutes * 60
    start = time.perf_counter()
    step, shown = 0, start
    print(f"training shapes_detector for {minutes:g} min, {BATCH} scenes a step", flush=True)
    while (elapsed := time.perf_counter() - start) < budget:
        fraction = elapsed / budget
        warm = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = peak_lr * warm * 0.5 * (1 + math.cos(math.pi * fraction))
        batch = [scene(rng) for _ in range(BATCH)]
        images = [tensor(item.image) for item in batch]
        targets = [
            {"boxes": torch.from_numpy(item.boxes), "labels": torch.from_numpy(item.classes)}
            for item in batch
        ]
        losses = model(images, targets)
        loss = torch.stack(list(losses.values())).sum()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        step += 1
        if time.perf_counter() - shown > 20:
            shown = time.perf_counter()
            parts = "  ".join(
                f"{k.removeprefix('bbox_')} {v.item():.3f}" for k, v in losses.items()
            )
            print(
                f"  {elapsed / 60:4.1f}/{minutes:g} min  step {step:5d}  loss {loss.item():.3f}"
                f"  ({parts})  {step * BATCH / elapsed:.1f} scenes/s",
                flush=True,
            )
    print(f"trained {step} steps ({step * BATCH} scenes) in {time.perf_counter() - start:.0f} s")
    return model.eval()


def write_model_files(model: torch.nn.Module, out: Path) -> None:
    """``weights.pt``, ``labels.txt`` and ``model.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), str(out / "weights.pt"))
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    manifest = {**MANIFEST, "source": "models/shapes/train.py: synthetic scenes, seed 0"}
    (out / "model.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def evaluate(out: Path, count: int = HELD_OUT) -> dict[str, float]:
    """mAP@0.5 on ``count`` new scenes, through the server's task and engine."""
    spec = read_manifest(out, "shapes")
    task = task_for(spec)
    engine = engine_for(spec, load_module(spec), "cpu", max_batch_size=BATCH)
    parameters = {**task.defaults(), "score_threshold": 0.05, "max_detections": 100}
    rng = np.random.default_rng(12345)  # training used seed 0
    truths, found = [], []
    limits = DecodeLimits(100_000_000)
    for first in range(0, count, BATCH):
        batch = [scene(rng) for _ in range(min(BATCH, count - first))]
        items = [task.prepare(encode(s, first + i), limits) for i, s in enumerate(batch)]
        rows = engine.run([task.batch_input(item, parameters) for item in items])
        for s, result in zip(batch, task.postprocess(rows, items, parameters), strict=True):
            truths.append((s.boxes, s.classes))
            found.append((result.boxes, result.scores, result.class_ids))
        if len(truths) % 100 < BATCH:
            print(f"  evaluated {len(truths)}/{count} held-out scenes", flush=True)
    return mean_ap(truths, found)


def write_samples() -> None:
    """Three held-out scenes as JPEG, and where their shapes are (``samples/shapes.json``)."""
    folder = HERE / "samples"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(2024)
    truth = {}
    for index, (width, height) in enumerate([(640, 480), (480, 480), (400, 600)], 1):
        item = scene(rng, width, height)
        name = f"scene-{index}.jpg"
        item.image.save(folder / name, "JPEG", quality=92)
        truth[name] = [
            {"box": [round(float(v), 1) for v in box], "label": LABELS[kind]}
            for box, kind in zip(item.boxes, item.classes.tolist(), strict=True)
        ]
    (folder / "shapes.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--held-out", type=int, default=HELD_OUT, help="scenes to score")
    parser.add_argument("--output", type=Path, default=HERE, help="model directory to write")
    parser.add_argument("--evaluate-only", action="store_true", help="score the saved weights")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.evaluate_only:
        write_model_files(train(args.minutes, args.lr), args.output)
        if args.output == HERE:
            write_samples()
    scores = evaluate(args.output, args.held_out)
    print("held-out AP@0.5: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    if scores["mAP"] < TARGET_MAP:
        print(f"held-out mAP@0.5 below the {TARGET_MAP:.2f} target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

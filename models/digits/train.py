"""Train the demo model: a small CNN on scikit-learn's bundled UCI handwritten digits.

Run from the repository root::

    uv run python models/digits/train.py

The 1,797 8x8 digit images are upscaled to 32x32 grayscale (white ink on black), split
80/20 (stratified, fixed seed), and the CNN trains with small random affine jitter. The
held-out accuracy is measured through the serving path itself: each held-out image is
encoded as PNG, decoded by ``predictor.tasks.classification`` and run by the server's engine.
Writes ``weights.pt`` (a state dict, loaded with ``weights_only=True``), ``labels.txt``,
``model.json`` and one held-out sample PNG per class into ``samples/``.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from predictor.store.archs import DigitsCNN
from predictor.store.manifest import read_manifest
from predictor.tasks.classification import decode_image
from predictor.tasks.registry import engine_for

HERE = Path(__file__).resolve().parent
SIZE = 32
MEAN, STD = 0.25, 0.35  # of the 32x32 training pixels in 0..1, rounded
EPOCHS = 40
SEED = 0
TARGET_ACCURACY = 0.97


def upscale(digits_8x8: np.ndarray) -> np.ndarray:
    """0..16 8x8 images to 0..255 32x32 uint8 images (bilinear, antialiased)."""
    out = np.empty((len(digits_8x8), SIZE, SIZE), dtype=np.uint8)
    for i, image in enumerate(digits_8x8):
        small = Image.fromarray(np.rint(image * (255.0 / 16.0)).astype(np.uint8), mode="L")
        out[i] = np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    return out


def jitter(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-12 deg), scale (0.85..1.15) and shift (+-3 px)."""
    n = batch.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * (2 * np.pi * 12 / 180)
    scale = 0.85 + 0.3 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * (6 / SIZE * 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, align_corners=False, padding_mode="zeros")


def write_model_files() -> None:
    (HERE / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)), encoding="utf-8")
    manifest = {
        "task": "classification",
        "arch": "digits_cnn",
        "arch_kwargs": {"num_classes": 10},
        "weights": "weights.pt",
        "input": {
            "color": "L",
            "resize": SIZE,
            "crop": SIZE,
            "mean": [MEAN],
            "std": [STD],
            "background": 0,
        },
        "labels": "labels.txt",
        "top_k": 3,
        "source": "models/digits/train.py: scikit-learn's UCI digits, 80/20 split, seed 0",
    }
    (HERE / "model.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> int:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    digits = load_digits()
    images = upscale(digits.images)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=SEED
    )
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255.0 - MEAN) / STD
    y = torch.from_numpy(labels)
    model = DigitsCNN(num_classes=10)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * ((len(train_idx) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    print(f"training DigitsCNN on {len(train_idx)} images, {EPOCHS} epochs", flush=True)
    started = time.perf_counter()
    background = float(-MEAN / STD)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        total = 0.0
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            inputs = jitter(x[batch] - background, generator) + background
            loss = F.cross_entropy(model(inputs), y[batch], label_smoothing=0.05)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        if epoch % 5 == 0 or epoch == 1:
            print(f"  epoch {epoch:2d}/{EPOCHS}  loss {total / len(train_idx):.4f}", flush=True)
    model.eval()
    torch.save(model.state_dict(), HERE / "weights.pt")
    write_model_files()

    # Held-out accuracy through the serving path: PNG bytes -> preprocess -> Engine.
    spec = read_manifest(HERE, "digits")
    engine = engine_for(spec, model, "cpu", "float32", max_batch_size=64)
    pixels = [decode_image(png(images[i]), spec.input, 1 << 20) for i in test_idx]
    predicted = np.concatenate(
        [np.stack(engine.infer(pixels[i : i + 64])).argmax(1) for i in range(0, len(pixels), 64)]
    )
    accuracy = float((predicted == labels[test_idx]).mean())
    print(
        f"held-out accuracy {accuracy:.4f} ({int((predicted == labels[test_idx]).sum())}"
        f"/{len(test_idx)}) after {time.perf_counter() - started:.0f} s",
        flush=True,
    )

    samples = HERE / "samples"
    samples.mkdir(exist_ok=True)
    for old in samples.glob("*.png"):
        old.unlink()
    for digit in range(10):
        first = next(i for i in test_idx if labels[i] == digit)  # first held-out of each class
        (samples / f"digit-{digit}.png").write_bytes(png(images[first]))
    print(f"wrote weights.pt, model.json, labels.txt and 10 samples to {HERE}")
    if accuracy < TARGET_ACCURACY:
        print(f"held-out accuracy below the {TARGET_ACCURACY:.0%} target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

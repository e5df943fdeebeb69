"""Network architectures a manifest can name: this project's own, then torchvision's.

A manifest's ``arch`` is looked up in :data:`ARCHITECTURES` first, then in torchvision's
classification builders. Only builders run; weights arrive separately through safe loaders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 32x32 grayscale digits (the demo model trained on UCI digits)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised ``[N, 1, 32, 32]`` images."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


#: Builders this project ships, by manifest ``arch`` name. Tests may add their own.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"digits_cnn": DigitsCNN}


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification architectures."""
    import torchvision.models

    names: list[str] = torchvision.models.list_models(module=torchvision.models)
    return names


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Instantiate ``arch`` with random weights.

    Args:
        arch: a name from :data:`ARCHITECTURES` or a torchvision classification model.
        **kwargs: passed to the builder (e.g. ``num_classes``).

    Returns:
        The module, in eval mode.

    Raises:
        ValueError: the architecture is unknown.
    """
    if arch in ARCHITECTURES:
        module = ARCHITECTURES[arch](**kwargs)
    elif arch in torchvision_classifiers():
        import torchvision.models

        module = torchvision.models.get_model(arch, weights=None, **kwargs)
    else:
        raise ValueError(
            f"unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)} or a "
            "torchvision classification model (e.g. resnet18, mobilenet_v3_small)"
        )
    return module.eval()

"""Network architectures a manifest can name: this project's own, then torchvision's.

A manifest's ``arch`` is looked up in :data:`ARCHITECTURES` first, then in torchvision's
classification and detection builders. Only builders run (never a download: detection
backbones are built without their pretrained weights); weights arrive separately through
safe loaders.
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


class ShapesBackbone(nn.Module):
    """A small stride-16 CNN for the shapes demo detector (``out_channels`` = 128)."""

    out_channels = 128

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [(3, 24, 2), (24, 32, 1), (32, 48, 2), (48, 64, 2), (64, 96, 1), (96, 128, 2)]
        for c_in, c_out, stride in widths:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(128, 128, 3, padding=2, dilation=2), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features at 1/16 of the input size."""
        out: torch.Tensor = self.body(x)
        return out


def shapes_detector(num_classes: int = 4, min_size: int = 192, max_size: int = 384) -> nn.Module:
    """The demo detector: torchvision's FCOS head on :class:`ShapesBackbone`.

    One feature level at stride 16 (every object size on it), two convolutions per head
    tower. Anchor-free and densely supervised, it trains from scratch on a CPU in minutes.

    Args:
        num_classes: classes including the background slot 0 (circle, square, triangle + 1).
        min_size: the shorter side images are resized to.
        max_size: the longest the longer side may become.
    """
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    detector: nn.Module = FCOS(
        ShapesBackbone(),
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        anchor_generator=AnchorGenerator(sizes=((16,),), aspect_ratios=((1.0,),)),
        head=FCOSHead(ShapesBackbone.out_channels, 1, num_classes, num_convs=2),
        center_sampling_radius=1.5,
        topk_candidates=200,
    )
    return detector


#: Builders this project ships, by manifest ``arch`` name. Tests may add their own.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": DigitsCNN,
    "shapes_detector": shapes_detector,
}


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's classification architectures."""
    import torchvision.models

    names: list[str] = torchvision.models.list_models(module=torchvision.models)
    return names


def torchvision_detectors() -> list[str]:
    """Names of torchvision's object detection architectures."""
    import torchvision.models.detection

    names: list[str] = torchvision.models.list_models(module=torchvision.models.detection)
    return names


def build(arch: str, **kwargs: Any) -> nn.Module:
    """Instantiate ``arch`` with random weights.

    Args:
        arch: a name from :data:`ARCHITECTURES` or a torchvision classification or detection
            model.
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
    elif arch in torchvision_detectors():
        import torchvision.models

        kwargs.setdefault("weights_backbone", None)
        module = torchvision.models.get_model(arch, weights=None, **kwargs)
    else:
        raise ValueError(
            f"unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)}, a torchvision "
            "classification model (e.g. resnet18) or detection model (e.g. fcos_resnet50_fpn)"
        )
    return module.eval()

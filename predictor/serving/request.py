"""One inference request as the models see it: images, parameters, and how to answer.

The edges decide the protocol once and build this; the model, its task and the batcher
never look at protocol payloads again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: An image as it travels to preprocessing: encoded bytes, or an FP32 ``(C, H, W)`` tensor.
ImagePayload = bytes | np.ndarray


@dataclass
class ImageRequest:
    """One inference request, protocol-neutral.

    Attributes:
        protocol: ``v1``, ``v2`` or ``grpc`` (how to answer; the ``protocol`` metric label).
        images: the images, in request order.
        parameters: the request's parameters as sent (the task validates the ones it takes).
        timeout_ms: per-request deadline, if given (capped by the server's later).
        request_id: the v2 request id, echoed in the response.
        binary_outputs: answer with raw binary outputs (gRPC raw inputs, REST binary ext.).
        requested_outputs: v2 outputs asked for by name, with their ``binary_data`` choice
            (None: not said); None means all, in the task's order.
        labels: how error messages name each image (multipart parts); None: by index.
    """

    protocol: str
    images: list[ImagePayload]
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int | None = None
    request_id: str | None = None
    binary_outputs: bool = False
    requested_outputs: dict[str, bool | None] | None = None
    labels: list[str] | None = None

    def label(self, index: int) -> str | None:
        """How an error about image ``index`` names it (None: a lone image needs no name)."""
        if self.labels is not None:
            return self.labels[index]
        return f"image {index}" if len(self.images) > 1 else None

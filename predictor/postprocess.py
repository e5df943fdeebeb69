"""Model outputs to answers: class probabilities to top-k labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TopK:
    """The k most probable classes of one image, most probable first.

    Attributes:
        labels: class labels.
        scores: softmax probabilities.
        class_ids: class indices.
    """

    labels: tuple[str, ...]
    scores: np.ndarray
    class_ids: np.ndarray


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> TopK:
    """Pick the ``k`` most probable classes from one row of softmax probabilities.

    Ties are broken by the lower class id, so results are deterministic.

    Args:
        probabilities: ``float32`` vector of class probabilities.
        labels: class labels; ids beyond the list are labelled by their number.
        k: how many classes; clipped to the number of classes.

    Returns:
        The top-k classes.
    """
    classes = probabilities.shape[0]
    k = max(1, min(k, classes))
    if k < classes:  # O(classes): keep everything tied with the k-th largest, sort only that
        kth = np.partition(probabilities, classes - k)[classes - k]
        candidates = np.flatnonzero(probabilities >= kth)
    else:
        candidates = np.arange(classes)
    order = np.lexsort((candidates, -probabilities[candidates]))[:k]
    ids = candidates[order].astype(np.int64)
    names = tuple(labels[i] if i < len(labels) else str(i) for i in ids.tolist())
    return TopK(names, probabilities[ids].astype(np.float32), ids)

"""Top-k: most probable first, deterministic ties, k clipped, labels by index."""

from __future__ import annotations

import numpy as np

from predictor.tasks.classification import top_k


def test_most_probable_first() -> None:
    result = top_k(np.array([0.1, 0.5, 0.15, 0.25], np.float32), ["a", "b", "c", "d"], 3)
    assert result.labels == ("b", "d", "c")
    assert result.class_ids.tolist() == [1, 3, 2]
    np.testing.assert_allclose(result.scores, [0.5, 0.25, 0.15])
    assert result.scores.dtype == np.float32
    assert result.class_ids.dtype == np.int64


def test_ties_break_by_lower_class_id() -> None:
    result = top_k(np.array([0.25, 0.25, 0.25, 0.25], np.float32), ["a", "b", "c", "d"], 4)
    assert result.class_ids.tolist() == [0, 1, 2, 3]


def test_k_is_clipped_to_the_number_of_classes() -> None:
    assert len(top_k(np.array([0.4, 0.6], np.float32), ["a", "b"], 10).labels) == 2
    assert len(top_k(np.array([0.4, 0.6], np.float32), ["a", "b"], 0).labels) == 1


def test_classes_without_a_label_are_named_by_number() -> None:
    result = top_k(np.array([0.1, 0.2, 0.7], np.float32), ["a"], 2)
    assert result.labels == ("2", "1")


def test_matches_a_full_sort_on_many_classes_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        probs = rng.choice([0.1, 0.2, 0.3, 0.4], size=1000).astype(np.float32)  # many ties
        k = int(rng.integers(1, 20))
        expected = sorted(range(1000), key=lambda i: (-probs[i], i))[:k]
        assert top_k(probs, [str(i) for i in range(1000)], k).class_ids.tolist() == expected

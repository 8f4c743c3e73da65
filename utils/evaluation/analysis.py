"""Array-level analyses behind the notebook's figures: overconfidence without the true label, score disagreement."""

from __future__ import annotations

import numpy as np

from utils.arrays import as_array, log_softmax


def confidence_without_true_class(
    features: object, labels: np.ndarray, text_features: np.ndarray, temperature: float = 1.0, logit_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Each ID image's max softmax confidence over all class prompts, and over all prompts but its own class.

    The notes' worry: "if the true labels are not there, [CLIP] can still be overconfident".
    """
    s = logit_scale * (as_array(features) @ as_array(text_features).T).astype(np.float64) / temperature
    labels = np.asarray(labels)
    with_true = np.exp(log_softmax(s).max(axis=1))
    s_without = s.copy()
    s_without[np.arange(len(labels)), labels] = -np.inf
    without_true = np.exp(log_softmax(s_without).max(axis=1))
    return with_true, without_true


def rank_fraction(scores: np.ndarray) -> np.ndarray:
    """Each score's rank as a fraction in [0, 1] (1 = most in-distribution), so different scores compare."""
    order = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    return order / max(1, len(scores) - 1)


def disagreements(score_a: np.ndarray, score_b: np.ndarray, count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Indices where a ranks an image most ID and b least (first), and the reverse (second), strongest first."""
    gap = rank_fraction(score_a) - rank_fraction(score_b)
    order = np.argsort(-gap, kind="stable")
    return order[:count], order[::-1][:count]

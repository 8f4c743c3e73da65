"""Zero-shot scores from cosine similarities s between image features and the ID class prompts."""

from __future__ import annotations

import numpy as np

from utils.scores.base import InDistribution, Score, as_array

CHUNK = 8192  # rows per block: bounds memory for ImageNet-sized N x C similarity matrices


class ZeroShotScore(Score):
    """Base: reduces each row of s = features @ text_features.T to one number, block by block."""

    needs = ("text_features",)

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def _fit(self, ind: InDistribution) -> None:
        self.text_features = as_array(ind.text_features)

    def _score(self, features: object) -> np.ndarray:
        blocks = [
            self.reduce(as_array(features[i : i + CHUNK]) @ self.text_features.T)
            for i in range(0, len(features), CHUNK)
        ]
        return np.concatenate(blocks) if blocks else np.zeros(0)

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MaxLogit(ZeroShotScore):
    """Maximum inner product score (MIS; the max-logit of Hendrycks et al., 2022): max_k s_k."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return similarities.max(axis=1).astype(np.float64)


class MCM(ZeroShotScore):
    """Maximum Concept Matching (Ming et al., NeurIPS 2022): max_k softmax(s / T)_k.

    Computed as 1 / sum_k exp((s_k - max_j s_j) / T), which is exact and cannot overflow.
    """

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        s = similarities.astype(np.float64) / self.temperature
        return 1.0 / np.exp(s - s.max(axis=1, keepdims=True)).sum(axis=1)

"""Zero-shot scores from cosine similarities s = features @ text_features.T to the ID class prompts."""

from __future__ import annotations

import numpy as np

from utils.arrays import log_softmax, logsumexp
from utils.scores.base import InDistribution, Score, as_array


class ZeroShotScore(Score):
    """Base: reduces each row of s/T (s = cosine similarities to the ID prompts) to one number."""

    needs = ("text_features",)
    inputs = ("temperature",)

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def _fit(self, ind: InDistribution) -> None:
        self.text_features = as_array(ind.text_features)

    def _score(self, features: np.ndarray) -> np.ndarray:
        return self.reduce((features @ self.text_features.T).astype(np.float64))

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MaxLogit(ZeroShotScore):
    """Maximum inner product score (MIS; the max-logit of Hendrycks et al., ICML 2022): max_k s_k."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return similarities.max(axis=1)


class MCM(ZeroShotScore):
    """Maximum Concept Matching (Ming et al., NeurIPS 2022): max_k softmax(s / T)_k, T = 1 in the paper."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(similarities / self.temperature).max(axis=1))


class Energy(ZeroShotScore):
    """Energy score (Liu et al., NeurIPS 2020) on CLIP similarities: T · logsumexp_k(s_k / T)."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return self.temperature * logsumexp(similarities / self.temperature)


class NegEntropy(ZeroShotScore):
    """Negative entropy of the zero-shot prediction: −H(p) = Σ_k p_k log p_k, p = softmax(s / T)."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        log_p = log_softmax(similarities / self.temperature)
        return (np.exp(log_p) * log_p).sum(axis=1)


class SoftmaxVariance(ZeroShotScore):
    """Variance of the zero-shot prediction over classes: Var_k(p_k), p = softmax(s / T) (peaked = ID)."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(similarities / self.temperature)).var(axis=1)

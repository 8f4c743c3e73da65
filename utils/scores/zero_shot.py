"""Zero-shot scores from cosine similarities s = features @ text_features.T to the ID class prompts.

The softmax scores rank by an exact transform of their value, computed in log space from the gaps to the top class
(and, for entropy and variance, from the distance to the uniform prediction), so that no T rounds them to ties:
with T = 0.01 (CLIP's own scale) a well-separated image has p_max within 1e-17 of 1, which float64 stores as
exactly 1.0, and at large T every p_k lies within 1e-17 of 1/K. Each transform is strictly increasing in the
paper's value, so every metric is the paper's; `plain` turns a ranked value back into the paper's where wanted.
"""

from __future__ import annotations

import numpy as np

from utils.arrays import log_softmax, logsumexp, sigmoid
from utils.scores.base import InDistribution, Score, as_array
from utils.settings import Setting, positive_float

TEMPERATURE = Setting(
    "temperature", 1.0, "softmax temperature T", "MCM (Ming et al., NeurIPS 2022): T = 1",
    type=positive_float, select=("T",),
)  # fmt: skip


class ZeroShotScore(Score):
    """Base: reduces each row of s (cosine similarities to the ID prompts) to one number."""

    needs = ("text_features",)

    def _fit(self, ind: InDistribution) -> None:
        self.text_features = as_array(ind.text_features)

    def _score(self, features: np.ndarray) -> np.ndarray:
        return self.reduce((features @ self.text_features.T).astype(np.float64))

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TemperedScore(ZeroShotScore):
    """Base of the scores of p = softmax(s / T)."""

    settings = (TEMPERATURE,)
    constant_for_one_class = True  # a softmax over one class is 1 whatever the image

    def __init__(self, temperature: float = TEMPERATURE.default):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def _fit(self, ind: InDistribution) -> None:
        super()._fit(ind)
        if self.constant_for_one_class and len(self.text_features) < 2:
            raise ValueError(f"{type(self).__name__} reads a softmax over the ID classes, which is 1 for one class")


def gaps(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """r_k = z_k − max z with the top class's own entry set to −inf, and log A = log Σ_{k≠top} e^{r_k}, along the
    last axis: p_max = 1 / (1 + A), exactly, whatever the size of the gaps."""
    r = logits - logits.max(axis=-1, keepdims=True)
    np.put_along_axis(r, logits.argmax(axis=-1)[..., None], -np.inf, axis=-1)
    return r, logsumexp(r, axis=-1)


def mcm_log_odds(logits: np.ndarray) -> np.ndarray:
    """log p_max − log(1 − p_max) = −log A of softmax(logits) along the last axis."""
    return -gaps(logits)[1]


class MaxLogit(ZeroShotScore):
    """Maximum inner product score (MIS; the max-logit of Hendrycks et al., ICML 2022): max_k s_k."""

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return similarities.max(axis=1)


class MCM(TemperedScore):
    """Maximum Concept Matching (Ming et al., NeurIPS 2022): max_k softmax(s / T)_k, T = 1 in the paper.

    Ranked by its log-odds −log Σ_{k≠top} exp((s_k − s_top) / T).
    """

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return mcm_log_odds(similarities / self.temperature)

    @staticmethod
    def plain(ranked: np.ndarray) -> np.ndarray:
        """max_k softmax(s / T)_k of a ranked value."""
        return sigmoid(ranked)


class Energy(TemperedScore):
    """Energy score (Liu et al., NeurIPS 2020) on CLIP similarities: T · logsumexp_k(s_k / T)."""

    constant_for_one_class = False  # T · logsumexp of one class is its similarity

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        return self.temperature * logsumexp(similarities / self.temperature)


class NegEntropy(TemperedScore):
    """Negative entropy of the zero-shot prediction: −H(p) = Σ_k p_k log p_k, p = softmax(s / T).

    Ranked by log(log K − H) − log H, increasing in −H: log K − H = KL(p ‖ uniform) = Σ_k [(1 + u_k) log(1 + u_k)
    − u_k] / K with u_k = K p_k − 1 resolves near-uniform predictions (large T); H = log(1 + A) + Σ_{k≠top}
    e^{r_k} |r_k| / (1 + A), with r_k = (s_k − s_top) / T and A = Σ_{k≠top} e^{r_k}, near-one-hot ones (small T).
    """

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        logits = similarities / self.temperature
        r, log_a = gaps(logits)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_c = logsumexp(np.where(np.isfinite(r), r + np.log(-r), -np.inf))  # log Σ_{k≠top} e^{r_k} |r_k|
            a = np.exp(log_a)
            log_d = np.where(a > 0, np.log(np.log1p(a)) - log_a, 0.0)  # log(log(1 + A) / A), 0 as A -> 0
        log_h = np.logaddexp(log_a + log_d, log_c - np.log1p(a))
        return np.log(np.maximum(_from_uniform(logits), np.finfo(np.float64).tiny)) - log_h

    @staticmethod
    def plain(ranked: np.ndarray, classes: int) -> np.ndarray:
        """−H(p) over `classes` classes of a ranked value."""
        odds = np.exp(np.asarray(ranked, dtype=np.float64))  # (log K − H) / H
        return -np.log(classes) / (1 + odds)


def _from_uniform(logits: np.ndarray) -> np.ndarray:
    """KL(softmax(logits) ‖ uniform) per row, as a sum of non-negative terms (no cancellation near uniform)."""
    classes = logits.shape[1]
    log_kp = log_softmax(logits) + np.log(classes)  # log(K p_k)
    u = np.expm1(log_kp)
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.where(u > -1, (1 + u) * np.log1p(u), 0.0)  # K p log(K p), 0 where p underflowed
    return (own - u).sum(axis=1) / classes


class SoftmaxVariance(TemperedScore):
    """Variance of the zero-shot prediction over classes: Var_k(p_k), p = softmax(s / T) (peaked = ID).

    Ranked by log(K · Var) − log(1 − Σ_k p_k²) (K · Var = Σ p² − 1/K), increasing in Σ p²: the first term resolves
    near-uniform predictions (large T), the second near-one-hot ones (small T), from
    1 − Σ p² = (2A + A² − Σ_{k≠top} e^{2 r_k}) / (1 + A)².
    """

    def reduce(self, similarities: np.ndarray) -> np.ndarray:
        logits = similarities / self.temperature
        r, log_a = gaps(logits)
        b = np.exp(r - log_a[:, None])  # the others' shares of A, summing to 1
        a = np.exp(log_a)
        log_rest = np.log(2.0) + log_a + np.log1p(a * (1 - (b * b).sum(axis=1)) / 2) - 2 * np.log1p(a)  # log(1 − Σp²)
        spread = logits.shape[1] * np.exp(log_softmax(logits)).var(axis=1)  # two-pass: no cancellation
        return np.log(np.maximum(spread, np.finfo(np.float64).tiny)) - log_rest

    @staticmethod
    def plain(ranked: np.ndarray, classes: int) -> np.ndarray:
        """Var_k(p_k) over `classes` classes of a ranked value."""
        odds = np.exp(np.asarray(ranked, dtype=np.float64))  # (Σp² − 1/K) / (1 − Σp²)
        return ((1 / classes + odds) / (1 + odds)) / classes - 1 / classes**2

"""Logit scores of a linear probe (multinomial logistic regression) trained on frozen ID training features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utils.arrays import log_softmax, logsumexp
from utils.scores.base import InDistribution, Score
from utils.scores.logistic_regression import DEFAULT_CS, LinearProbe, fit_linear_probe


class ProbeScore(Score):
    """Fits (or reuses, through InDistribution.shared) one probe; subclasses reduce its logits."""

    needs = ("train_features", "train_labels")
    inputs = ("seed", "device")
    classifier = "linear_probe"

    def __init__(self, Cs: Sequence[float] = DEFAULT_CS, seed: int = 0, device: str = "cpu"):
        super().__init__()
        self.Cs, self.seed, self.device = tuple(Cs), seed, device

    def _fit(self, ind: InDistribution) -> None:
        key = ("probe", self.Cs, self.seed)
        if key not in ind.shared:
            ind.shared[key] = fit_linear_probe(ind.train_features, ind.train_labels, self.Cs, seed=self.seed,
                                               device=self.device)  # fmt: skip
        self.probe: LinearProbe = ind.shared[key]

    def _score(self, features: np.ndarray) -> np.ndarray:
        return self.reduce(self.probe.logits(features))

    def logits(self, features: object) -> np.ndarray:
        return self.probe.logits(features)

    def details(self) -> dict[str, float]:
        return {"C": self.probe.C}

    def reduce(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ProbeMSP(ProbeScore):
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017) of the linear probe: max_k softmax(f)_k."""

    def reduce(self, logits: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(logits).max(axis=1))


class ProbeEnergy(ProbeScore):
    """Energy (Liu et al., NeurIPS 2020) of the linear probe's logits f: logsumexp_k f_k."""

    def reduce(self, logits: np.ndarray) -> np.ndarray:
        return logsumexp(logits)


class ProbeMaxLogit(ProbeScore):
    """Max-logit (Hendrycks et al., ICML 2022) of the linear probe: max_k f_k."""

    def reduce(self, logits: np.ndarray) -> np.ndarray:
        return logits.max(axis=1)

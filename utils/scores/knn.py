"""Deep nearest neighbours (Sun et al., ICML 2022): −‖z − z_(k)‖, z_(k) the k-th nearest ID training feature."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from utils.scores.base import InDistribution, Score, as_array, chunks, l2_normalise

BANK_CHUNK = 65536  # training rows compared at once: bounds memory to QUERY_CHUNK x BANK_CHUNK similarities
QUERY_CHUNK = 1024


def top_similarities(queries: np.ndarray, bank: object, k: int) -> np.ndarray:
    """The k largest cosine similarities of each (normalised) query to the (normalised) bank, descending."""
    out = np.empty((len(queries), k), dtype=np.float32)
    for q0 in range(0, len(queries), QUERY_CHUNK):
        q = torch.from_numpy(np.ascontiguousarray(queries[q0 : q0 + QUERY_CHUNK]))
        best = None
        for block in chunks(bank, BANK_CHUNK):
            sims = q @ torch.from_numpy(l2_normalise(block)).T
            if best is not None:
                sims = torch.cat([best, sims], dim=1)
            best = torch.topk(sims, min(k, sims.shape[1]), dim=1).values
        out[q0 : q0 + len(q)] = best.numpy()
    return out


def distance_from_similarity(similarity: np.ndarray) -> np.ndarray:
    """Euclidean distance between unit vectors: sqrt(2 − 2 cos)."""
    return np.sqrt(np.maximum(2.0 - 2.0 * similarity.astype(np.float64), 0.0))


class KNN(Score):
    """Deep nearest neighbours (Sun et al., ICML 2022): −‖z − z_(k)‖ over L2-normalised features.

    k = 50 for CIFAR and k = 1000 for the full ImageNet-1k train set in the paper.
    """

    needs = ("train_features",)

    def __init__(self, k: int = 50):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = int(k)

    def _fit(self, ind: InDistribution) -> None:
        if len(ind.train_features) < self.k:
            raise ValueError(f"KNN with k={self.k} needs at least k training features, got {len(ind.train_features)}")
        self.bank = ind.train_features

    def _score(self, features: np.ndarray) -> np.ndarray:
        return self.sweep(features, [self.k])[self.k]

    def sweep(self, features: object, ks: Sequence[int]) -> dict[int, np.ndarray]:
        """Scores for several k from one neighbour search at the largest k."""
        if any(k > self.k for k in ks):
            raise ValueError(f"a sweep can go up to the fitted k={self.k}, asked for {max(ks)}")
        queries = l2_normalise(as_array(features))
        top = top_similarities(queries, self.bank, max(ks))
        return {k: -distance_from_similarity(top[:, k - 1]) for k in ks}

"""Mahalanobis-distance scores on ID training features: class-conditional Gaussians with one shared covariance."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from utils.scores.base import CHUNK, InDistribution, Score, as_array, chunks

if TYPE_CHECKING:
    import torch  # imported where fitted: the score registry builds the scripts' flags, and --help skips torch


@dataclass
class ClassGaussians:
    means: np.ndarray  # C x D
    precision: np.ndarray  # D x D, pseudo-inverse of the shared covariance of class-centred features
    background_mean: np.ndarray  # D, mean of all training features
    background_precision: np.ndarray  # D x D, pseudo-inverse of their covariance


def fit_class_gaussians(features: object, labels: np.ndarray, chunk: int = CHUNK) -> ClassGaussians:
    """Class means, then centred covariances in a second streamed pass, inverted like scikit-learn's.

    Centring before the outer products (rather than E[xxᵀ] − μμᵀ) keeps the null space at round-off of the
    data, and scipy's `pinvh` drops eigenvalues below max|λ| · D · eps, as sklearn's EmpiricalCovariance
    does; the plain pseudo-inverse turned eigenvalues of ~1e-17 into precision entries of ~1e16 whenever
    N − C < D (fewer training images than dimensions).
    """
    import torch
    from scipy.linalg import pinvh  # what sklearn.covariance.EmpiricalCovariance inverts with

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() < 0:
        raise ValueError("Mahalanobis scores need labelled training features (labels >= 0)")
    classes = int(labels.max()) + 1
    dim = as_array(features[:1]).shape[1]
    sums, counts = torch.zeros((classes, dim), dtype=torch.float64), np.bincount(labels, minlength=classes)
    for block, rows in _blocks(features, labels, chunk):
        sums.index_add_(0, torch.from_numpy(rows), torch.from_numpy(block))  # 2.5x np.add.at
    sums, counts = sums.numpy(), counts.astype(np.float64)
    if np.any(counts == 0):
        raise ValueError(f"classes without training features: {np.flatnonzero(counts == 0).tolist()[:10]}")
    n = counts.sum()
    means, background_mean = sums / counts[:, None], sums.sum(axis=0) / n
    within, total = np.zeros((dim, dim)), np.zeros((dim, dim))
    for block, rows in _blocks(features, labels, chunk):
        centred = block - means[rows]
        within += centred.T @ centred
        centred = block - background_mean
        total += centred.T @ centred
    if n - classes < dim:
        warnings.warn(
            f"Mahalanobis: {int(n)} training features in {classes} classes span at most {int(n) - classes} of "
            f"{dim} dimensions; the covariance is singular and is pseudo-inverted on its span (scores from few "
            f"images are noisy: use more training images than dimensions for the published protocol)",
            stacklevel=2,
        )
    return ClassGaussians(
        means=means,
        precision=pinvh(within / n),
        background_mean=background_mean,
        background_precision=pinvh(total / n),
    )


def _blocks(features: object, labels: np.ndarray, chunk: int):
    start = 0
    for block in chunks(features, chunk):
        yield block.astype(np.float64), labels[start : start + len(block)]
        start += len(block)


def squared_distances(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(x − μ_c)ᵀ P (x − μ_c) for every row of x and every mean: N x C, by expansion, no per-class loop.

    Numpy arrays or torch tensors (float64 on a GPU: its matrix products are the whole cost)."""
    xp = x @ precision
    mp = means @ precision
    return (xp * x).sum(axis=1)[:, None] - 2.0 * xp @ means.T + (mp * means).sum(axis=1)[None, :]


class _GaussianScore(Score):
    needs = ("train_features", "train_labels")
    inputs = ("device",)

    def __init__(self, device: str | torch.device = "cpu"):
        import torch

        super().__init__()
        self.device = torch.device(device)

    def _fit(self, ind: InDistribution) -> None:

        if "gaussians" not in ind.shared:
            ind.shared["gaussians"] = fit_class_gaussians(ind.train_features, ind.train_labels)
        self.g: ClassGaussians = ind.shared["gaussians"]
        self._on_device: dict[str, torch.Tensor] = {}

    def distances(self, x: np.ndarray, which: str = "classes") -> np.ndarray:
        """Squared distances to the class means (or to the background mean), float64; on the score's device (the
        fitted statistics are moved there once)."""
        means, precision = ((self.g.means, self.g.precision) if which == "classes" else
                            (self.g.background_mean[None, :], self.g.background_precision))  # fmt: skip
        if self.device.type == "cpu":
            return squared_distances(x, means, precision)
        return distances_on(self._on_device, which, x, means, precision, self.device)


def distances_on(store: dict, which: str, x: np.ndarray, means: np.ndarray, precision: np.ndarray,
                 device: torch.device) -> np.ndarray:  # fmt: skip
    """squared_distances in float64 torch on `device`, the (means, precision) pair kept in `store` across calls."""
    import torch

    if which not in store:
        store[which] = (torch.from_numpy(means).to(device), torch.from_numpy(precision).to(device))
    means_t, precision_t = store[which]
    return squared_distances(torch.from_numpy(x).to(device), means_t, precision_t).cpu().numpy()


class Mahalanobis(_GaussianScore):
    """Mahalanobis (Lee et al., NeurIPS 2018): −min_c (x − μ_c)ᵀ Σ⁻¹ (x − μ_c), Σ shared by the classes."""

    def _score(self, features: np.ndarray) -> np.ndarray:
        return -self.distances(features.astype(np.float64)).min(axis=1)


class RelativeMahalanobis(_GaussianScore):
    """Relative Mahalanobis (Ren et al., 2021): −min_c [d_c(x) − d_0(x)], d_0 under one Gaussian of all features."""

    def _score(self, features: np.ndarray) -> np.ndarray:
        x = features.astype(np.float64)
        return -(self.distances(x).min(axis=1) - self.distances(x, "background")[:, 0])

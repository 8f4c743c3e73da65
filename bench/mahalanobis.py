"""Mahalanobis and relative Mahalanobis with many classes: ours against a plain per-class loop.

Ours: running sums, one matrix product per score; fit and scoring both timed.

python -m bench.mahalanobis     # 1,000 classes x 512 dims, 50k training and 10k test features
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.common import median_seconds, parser, report
from utils.scores import InDistribution, build_score

SIZES = {"full": (1000, 512, 50_000, 10_000), "smoke": (20, 32, 600, 200)}


def features(classes: int, dim: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((classes, dim))
    labels = np.arange(count) % classes
    x = centres[labels] + 0.7 * rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def ours(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ind = InDistribution(train_features=train, train_labels=labels)
    return build_score("maha").fit(ind)(test), build_score("rmd").fit(ind)(test)


def per_class_loop(train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward version: class by class for the means, the covariance and every distance."""
    x, t = train.astype(np.float64), test.astype(np.float64)
    classes = int(labels.max()) + 1
    means = [x[labels == c].mean(axis=0) for c in range(classes)]
    covariance = sum((x[labels == c] - means[c]).T @ (x[labels == c] - means[c]) for c in range(classes)) / len(x)
    precision = np.linalg.pinv(covariance, hermitian=True)
    mu0 = x.mean(axis=0)
    background = np.linalg.pinv((x - mu0).T @ (x - mu0) / len(x), hermitian=True)
    distances = np.stack([((t - m) @ precision * (t - m)).sum(axis=1) for m in means], axis=1)
    d0 = ((t - mu0) @ background * (t - mu0)).sum(axis=1)
    return -distances.min(axis=1), -(distances - d0[:, None]).min(axis=1)


def rank_identical(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable")))


def main(argv: Sequence[str] | None = None) -> str:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--loop-repeats", type=int, default=1, help="repeats of the (slow) per-class loop (default 1)")
    args = p.parse_args(argv)
    classes, dim, n_train, n_test = SIZES["smoke" if args.smoke else "full"]
    repeats, loop_repeats = (1, 1) if args.smoke else (args.repeats, args.loop_repeats)
    train, labels = features(classes, dim, n_train, seed=1)
    test, _ = features(classes, dim, n_test, seed=2)
    ours_seconds, (maha, rmd) = median_seconds(lambda: ours(train, labels, test), repeats)
    loop_seconds, (loop_maha, loop_rmd) = median_seconds(lambda: per_class_loop(train, labels, test), loop_repeats)
    rows = [
        ["per-class loop (numpy float64)", loop_repeats, loop_seconds, 1.0, "reference", "reference"],
        ["ours (numpy float64)", repeats, ours_seconds, loop_seconds / ours_seconds,
         rank_identical(maha, loop_maha), rank_identical(rmd, loop_rmd)],
    ]  # fmt: skip
    gap = max(
        np.abs(maha - loop_maha).max() / np.abs(loop_maha).max(), np.abs(rmd - loop_rmd).max() / np.abs(loop_rmd).max()
    )
    notes = [
        f"{classes:,} classes x {dim} dims, {n_train:,} training and {n_test:,} test features; "
        f"fit + Mahalanobis + relative Mahalanobis scores timed together.",
        f"Largest relative score difference: {gap:.1e}.",
    ]
    header = ["method", "repeats", "seconds", "speed-up", "Maha rank-identical", "RMD rank-identical"]
    return report("Mahalanobis / relative Mahalanobis", header, rows, notes)


if __name__ == "__main__":
    main()

"""OOD detection metrics. Scores follow the toolkit's convention: higher = more in-distribution.

ID is the positive class, as in the CLIP-OOD papers (MCM, KNN, NegLabel); FPR95_OOD gives OpenOOD's
convention (OOD positive) under a name that cannot be confused with it.
"""

from __future__ import annotations

import math

import numpy as np

METRICS = ("FPR95", "FPR95_OOD", "AUROC", "AUPR_IN", "AUPR_OUT")
LOWER_IS_BETTER = {"FPR95", "FPR95_OOD"}


def _check(name: str, scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError(f"no {name} scores to evaluate")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ValueError(f"{bad} of {scores.size} {name} scores are NaN or infinite; the score is ill-defined here")
    return scores


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score_pos > score_neg) + ½ P(tie): the Mann-Whitney statistic, ties given average ranks."""
    positive, negative = _check("ID", positive), _check("OOD", negative)
    both = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    rank_sum = average_rank[inverse[: positive.size]].sum()
    return float((rank_sum - positive.size * (positive.size + 1) / 2.0) / (positive.size * negative.size))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """Share of negatives accepted at the first ROC point where at least `tpr` of positives are accepted.

    Accepting means score >= threshold; the threshold is the ceil(tpr · n)-th highest positive score.
    """
    positive, negative = _check("ID", positive), _check("OOD", negative)
    needed = max(1, math.ceil(tpr * positive.size - 1e-9))
    threshold = np.sort(positive)[::-1][needed - 1]
    return float(np.mean(negative >= threshold))


def average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """Σ_n (R_n − R_{n−1}) P_n over the distinct score thresholds, highest first (scikit-learn's definition)."""
    positive, negative = _check("ID", positive), _check("OOD", negative)
    scores = np.concatenate([positive, negative])
    is_positive = np.r_[np.ones(positive.size), np.zeros(negative.size)]
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # ties enter together
    true_pos = np.cumsum(is_positive)[last_of_value]
    precision = true_pos / (last_of_value + 1)
    recall_step = np.diff(np.r_[0.0, true_pos]) / positive.size
    return float(np.sum(recall_step * precision))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """All metrics as fractions in [0, 1]: FPR95 (ID positive), FPR95_OOD (OOD positive), AUROC, AUPR_IN/OUT."""
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    return {
        "FPR95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "FPR95_OOD": fpr_at_tpr(-ood_scores, -id_scores, 0.95),
        "AUROC": auroc(id_scores, ood_scores),
        "AUPR_IN": average_precision(id_scores, ood_scores),
        "AUPR_OUT": average_precision(-ood_scores, -id_scores),
    }


def bootstrap_intervals(
    id_scores: np.ndarray, ood_scores: np.ndarray, rounds: int, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of every metric, resampling ID and OOD sets independently."""
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    rng = np.random.default_rng(seed)
    samples = {m: np.empty(rounds) for m in METRICS}
    for r in range(rounds):
        values = ood_metrics(
            id_scores[rng.integers(0, id_scores.size, id_scores.size)],
            ood_scores[rng.integers(0, ood_scores.size, ood_scores.size)],
        )
        for m in METRICS:
            samples[m][r] = values[m]
    tail = 100 * (1 - level) / 2
    return {m: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for m, v in samples.items()}

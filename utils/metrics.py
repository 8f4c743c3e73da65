"""OOD detection metrics with ID as the positive class, as in the CLIP-OOD papers (MCM, KNN, NegLabel).

Scores follow the toolkit's one convention: higher = more in-distribution.
"""

from __future__ import annotations

import math

import numpy as np


def _check(name: str, scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError(f"no {name} scores to evaluate")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ValueError(f"{bad} of {scores.size} {name} scores are NaN or infinite; the score is ill-defined here")
    return scores


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """P(score_ID > score_OOD) + 0.5 P(tie): the Mann-Whitney statistic, ties given average ranks."""
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    both = np.concatenate([id_scores, ood_scores])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    rank_sum = average_rank[inverse[: id_scores.size]].sum()
    n_id, n_ood = id_scores.size, ood_scores.size
    return float((rank_sum - n_id * (n_id + 1) / 2.0) / (n_id * n_ood))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD samples accepted at the highest threshold that accepts at least `tpr` of ID samples.

    Accepting means score >= threshold; the threshold is the ceil(tpr * n)-th highest ID score.
    """
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    needed = max(1, math.ceil(tpr * id_scores.size - 1e-9))
    threshold = np.sort(id_scores)[::-1][needed - 1]
    return float(np.mean(ood_scores >= threshold))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC and FPR95 as fractions in [0, 1]."""
    return {"AUROC": auroc(id_scores, ood_scores), "FPR95": fpr_at_tpr(id_scores, ood_scores, 0.95)}

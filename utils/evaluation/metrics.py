"""OOD detection metrics. Scores follow the toolkit's convention: higher = more in-distribution.

ID is the positive class, as in the CLIP-OOD papers (MCM, KNN, NegLabel); FPR95_OOD gives OpenOOD's
convention (OOD positive) under a name that cannot be confused with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

METRICS = ("FPR95", "FPR95_OOD", "AUROC", "AUPR_IN", "AUPR_OUT")
# A 95% percentile interval reads the 2.5th and 97.5th percentiles of the rounds: with 1,000 rounds each end rests
# on 25 of them, the count Efron & Tibshirani (An Introduction to the Bootstrap, 1993) advise for percentile
# intervals; with fewer the ends are noise (one round: both ends are that round, an "interval" of one point).
MIN_BOOTSTRAP = 1000
LOWER_IS_BETTER = {"FPR95", "FPR95_OOD", "FPR95_MCM", "FPR95_OPENOOD"}


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


def _curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives accepted at each distinct threshold, highest threshold first (ties enter together)."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(-scores, kind="stable")
    is_positive = np.r_[np.ones(positive.size), np.zeros(negative.size)][order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores[order])), scores.size - 1]
    true_pos = np.cumsum(is_positive)[last_of_value]
    return true_pos, last_of_value + 1 - true_pos


def fpr_at_closest_recall(positive: np.ndarray, negative: np.ndarray, recall: float = 0.95) -> float:
    """FPR95 as the CLIP-OOD papers' code computes it (MCM, NegLabel; Hendrycks' fpr_and_fdr_at_recall): at the
    threshold whose recall is closest to `recall`, the lowest such threshold among equals.

    It differs from `fpr_at_tpr` in two ways: on a plateau of equal recall it also accepts the negatives that score
    between the positives (so it is >= ours when recall · n is an integer), and the closest recall may lie below
    `recall` (then it may be lower). Both vanish as the number of positives grows.
    """
    positive, negative = _check("ID", positive), _check("OOD", negative)
    true_pos, false_pos = _curve(positive, negative)
    full = int(np.argmax(true_pos == positive.size))  # thresholds beyond the first with full recall are not looked at
    distance = np.abs(true_pos[: full + 1] / positive.size - recall)
    chosen = full - int(np.argmin(distance[::-1]))  # scanned from the lowest threshold up: the lowest wins ties
    return float(false_pos[chosen] / negative.size)


def aupr_trapezoid(positive: np.ndarray, negative: np.ndarray) -> float:
    """OpenOOD's AUPR: the trapezoid area under the precision-recall curve (scikit-learn's precision_recall_curve
    and auc, which starts the curve at recall 0, precision 1), not average precision."""
    positive, negative = _check("ID", positive), _check("OOD", negative)
    true_pos, false_pos = _curve(positive, negative)
    full = int(np.argmax(true_pos == positive.size))
    precision = np.r_[1.0, (true_pos / (true_pos + false_pos))[: full + 1]]
    recall = np.r_[0.0, (true_pos / positive.size)[: full + 1]]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def fpr_openood(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """OpenOOD v1.5's FPR@95 (openood/evaluators/metrics.py auc_and_fpr_recall, called with OOD as `positive`):
    scikit-learn's roc_curve with its default drop_intermediate, read at its first point whose TPR reaches `tpr`.

    roc_curve drops every point collinear with its neighbours, which may be the first one at 95% recall: the FPR is
    then read further along the curve (0.8 where ours, FPR95_OOD, is 0.6 in tests/test_openood.py).
    """
    positive, negative = _check("OOD", positive), _check("ID", negative)
    true_pos, false_pos = _curve(positive, negative)
    if len(true_pos) > 2:  # scikit-learn's drop_intermediate: keep the ends and every point where the slope changes
        kept = np.r_[True, np.logical_or(np.diff(false_pos, 2), np.diff(true_pos, 2)), True]
        true_pos, false_pos = true_pos[kept], false_pos[kept]
    true_pos, false_pos = np.r_[0, true_pos], np.r_[0, false_pos]
    return float(false_pos[int(np.argmax(true_pos / positive.size >= tpr))] / negative.size)


# Metrics that follow one codebase's definition, asked for by name (--extra-metrics, or a paper preset).
EXTRA_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "FPR95_MCM": lambda i, o: fpr_at_closest_recall(i, o, 0.95),  # ID positive, MCM's/NegLabel's rule
    "AUPR_IN_OPENOOD": aupr_trapezoid,  # ID positive
    "AUPR_OUT_OPENOOD": lambda i, o: aupr_trapezoid(-o, -i),  # OOD positive
    "FPR95_OPENOOD": lambda i, o: fpr_openood(-o, -i, 0.95),  # OOD positive, OpenOOD's roc_curve reading
}


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, extra: Sequence[str] = ()) -> dict[str, float]:
    """All metrics as fractions in [0, 1]: FPR95 (ID positive), FPR95_OOD (OOD positive), AUROC, AUPR_IN/OUT, and
    any `extra` ones named from EXTRA_METRICS."""
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    return {
        "FPR95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "FPR95_OOD": fpr_at_tpr(-ood_scores, -id_scores, 0.95),
        "AUROC": auroc(id_scores, ood_scores),
        "AUPR_IN": average_precision(id_scores, ood_scores),
        "AUPR_OUT": average_precision(-ood_scores, -id_scores),
        **{name: EXTRA_METRICS[name](id_scores, ood_scores) for name in extra},
    }


def bootstrap_intervals(
    id_scores: np.ndarray, ood_scores: np.ndarray, rounds: int, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of every metric, resampling ID and OOD sets independently (at least
    MIN_BOOTSTRAP rounds)."""
    if rounds < MIN_BOOTSTRAP:
        raise ValueError(f"a {100 * level:g}% bootstrap interval needs at least {MIN_BOOTSTRAP} rounds, got {rounds}")
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

"""Evaluation: metrics against scikit-learn, the notebook's analyses, and the pipeline's stages and input resolvers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from utils.evaluation.analysis import confidence_without_true_class, disagreements, rank_fraction
from utils.evaluation.metrics import METRICS, bootstrap_intervals, fpr_at_tpr, ood_metrics


def test_perfect_separation():
    m = ood_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2]))
    assert m == {"FPR95": 0.0, "FPR95_OOD": 0.0, "AUROC": 1.0, "AUPR_IN": 1.0, "AUPR_OUT": 1.0}


def test_reversed_and_tied():
    reversed_ = ood_metrics(np.array([0.1, 0.2]), np.array([0.8, 0.9]))
    assert reversed_["AUROC"] == 0.0 and reversed_["FPR95"] == 1.0 and reversed_["FPR95_OOD"] == 1.0
    tied = ood_metrics(np.ones(5), np.ones(7))
    assert tied["AUROC"] == 0.5 and tied["FPR95"] == 1.0 and tied["FPR95_OOD"] == 1.0
    assert tied["AUPR_IN"] == pytest.approx(5 / 12) and tied["AUPR_OUT"] == pytest.approx(7 / 12)


def test_worked_example_both_fpr_conventions():
    # ID positive: 19 of 20 ID scores (1..20) are accepted at threshold 2; OOD scores >= 2 are 2, 3 and 25.
    id_scores = np.arange(1, 21, dtype=float)
    ood_scores = np.array([0.5, 1.5, 2.0, 3.0, 25.0])
    m = ood_metrics(id_scores, ood_scores)
    assert m["FPR95"] == pytest.approx(3 / 5)
    # OOD positive: catching 95% of 5 OOD images needs all 5, so scores <= 25 are rejected: every ID image.
    assert m["FPR95_OOD"] == pytest.approx(1.0)
    # ID > OOD pairs, ties counted half: 20 + 19 + (18 + 0.5) + (17 + 0.5) + 0, over 20 x 5
    assert m["AUROC"] == pytest.approx((20 + 19 + 18.5 + 17.5) / 100)


def test_fpr95_ood_small_example():
    # 20 OOD scores 1..20 (low = OOD), ID scores: rejecting 19 of 20 OOD images means threshold 19 (reject <= 19).
    ood_scores = np.arange(1, 21, dtype=float)
    id_scores = np.array([5.0, 19.0, 19.5, 30.0])
    assert ood_metrics(id_scores, ood_scores)["FPR95_OOD"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
    ood_scores = np.round(rng.normal(0.0, 1.0, 200), 1)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_scores, ood_scores]
    m = ood_metrics(id_scores, ood_scores)
    assert m["AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["AUPR_IN"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["AUPR_OUT"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["FPR95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")])
    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert m["FPR95_OOD"] == pytest.approx(fpr_o[np.searchsorted(tpr_o, 0.95, side="left")])
    assert fpr_at_tpr(id_scores, ood_scores, 0.5) == pytest.approx(fpr[np.searchsorted(tpr, 0.5, side="left")])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_are_rejected(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        ood_metrics(np.array([0.5, bad]), np.array([0.1]))


def test_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="no OOD scores"):
        ood_metrics(np.array([0.5]), np.array([]))


def test_bootstrap_intervals_bracket_the_estimate():
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(1, 1, 400), rng.normal(0, 1, 300)
    point = ood_metrics(id_scores, ood_scores)
    intervals = bootstrap_intervals(id_scores, ood_scores, rounds=200, seed=1)
    assert set(intervals) == set(METRICS)
    for metric, (low, high) in intervals.items():
        assert low <= point[metric] <= high and high - low < 0.2
    assert intervals == bootstrap_intervals(id_scores, ood_scores, rounds=200, seed=1)  # seeded
    assert bootstrap_intervals(np.ones(5) * 2, np.zeros(5), rounds=20)["AUROC"] == (1.0, 1.0)


def test_confidence_without_the_true_class():
    text = np.eye(3, dtype=np.float32)
    features = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=np.float32)
    with_true, without_true = confidence_without_true_class(features, np.array([0, 2]), text)
    e = np.exp
    assert with_true == pytest.approx([e(1) / (e(1) + 2), e(0.8) / (1 + e(0.6) + e(0.8))])
    # image 0 without class 0: classes 1 and 2 tie at similarity 0; image 1 without class 2: class 1 wins
    assert without_true == pytest.approx([0.5, e(0.6) / (1 + e(0.6))])


def test_rank_fraction_and_disagreements():
    assert rank_fraction(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    a = np.array([4.0, 3.0, 2.0, 1.0])
    b = np.array([1.0, 3.0, 2.0, 4.0])
    a_id_b_ood, b_id_a_ood = disagreements(a, b, count=1)
    assert a_id_b_ood.tolist() == [0] and b_id_a_ood.tolist() == [3]

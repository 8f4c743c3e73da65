"""Metrics: known answers and cross-checks against scikit-learn (ID = positive class)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from utils.metrics import auroc, fpr_at_tpr, ood_metrics


def test_perfect_separation():
    m = ood_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2]))
    assert m == {"AUROC": 1.0, "FPR95": 0.0}


def test_reversed_and_tied():
    assert auroc(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 0.0
    assert fpr_at_tpr(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    assert auroc(np.ones(5), np.ones(7)) == 0.5
    assert fpr_at_tpr(np.ones(5), np.ones(7)) == 1.0


def test_worked_example():
    # 20 ID scores 1..20: 95% of them (19) are accepted at threshold 2; OOD scores >= 2 are 2, 3 and 25.
    id_scores = np.arange(1, 21, dtype=float)
    ood_scores = np.array([0.5, 1.5, 2.0, 3.0, 25.0])
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(3 / 5)
    # pairs where ID > OOD, ties counted half: 20 + 19 + (18 + 0.5) + (17 + 0.5) + 0, over 20 x 5
    assert auroc(id_scores, ood_scores) == pytest.approx((20 + 19 + 18.5 + 17.5) / 100)


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    id_scores = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes ties
    ood_scores = np.round(rng.normal(0.0, 1.0, 200), 1)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_scores, ood_scores]
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_are_rejected(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        ood_metrics(np.array([0.5, bad]), np.array([0.1]))


def test_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="no OOD scores"):
        ood_metrics(np.array([0.5]), np.array([]))

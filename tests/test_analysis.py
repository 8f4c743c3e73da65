"""The notebook's analyses, on hand-made inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from utils.analysis import confidence_without_true_class, disagreements, rank_fraction


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

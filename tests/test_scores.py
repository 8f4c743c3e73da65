"""Scores: every registered one, against straightforward implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.scores import SCORES, InDistribution, build_score, resolve_scores


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def toy():
    """ID images sit on their class prompt; OOD images sit between prompts."""
    rng = np.random.default_rng(0)
    text = _unit(rng.normal(size=(4, 16)))
    labels = rng.integers(0, 4, size=40)
    id_feats = _unit(text[labels] + 0.05 * rng.normal(size=(40, 16)))
    ood_feats = _unit(text.mean(0, keepdims=True) + 0.05 * rng.normal(size=(30, 16)))
    return InDistribution(text_features=text), id_feats, ood_feats


@pytest.mark.parametrize("name", sorted(SCORES))
def test_shape_finite_and_ranking(name, toy):
    ind, id_feats, ood_feats = toy
    score = build_score(name).fit(ind)
    s_id, s_ood = score(id_feats), score(ood_feats)
    assert s_id.shape == (40,) and s_ood.shape == (30,)
    assert np.isfinite(s_id).all() and np.isfinite(s_ood).all()
    assert s_id.min() > s_ood.max()  # higher = more in-distribution
    assert np.allclose(score(torch.from_numpy(id_feats)), s_id)  # torch input works too


@pytest.mark.parametrize("temperature", [0.01, 1.0, 100.0])
def test_mcm_matches_softmax(toy, temperature):
    ind, id_feats, _ = toy
    s = torch.from_numpy(id_feats @ ind.text_features.T).double()
    expected = torch.softmax(s / temperature, dim=1).max(dim=1).values.numpy()
    assert np.allclose(build_score("MCM", temperature=temperature).fit(ind)(id_feats), expected, rtol=1e-6)


def test_mcm_range_with_temperature_one(toy):
    ind, id_feats, _ = toy
    s = build_score("mcm").fit(ind)(id_feats)
    assert (s > 1 / 4).all() and (s < 1).all()


def test_mis_is_max_cosine(toy):
    ind, id_feats, _ = toy
    assert np.allclose(build_score("MIS").fit(ind)(id_feats), (id_feats @ ind.text_features.T).max(1), atol=1e-6)


def test_mcm_large_input_is_chunked_consistently(toy):
    ind, _, _ = toy
    feats = _unit(np.random.default_rng(1).normal(size=(20000, 16)))
    score = build_score("mcm").fit(ind)
    assert np.allclose(score(feats)[:100], score(feats[:100]))


def test_names_and_errors(toy):
    assert resolve_scores(["MCM", "maxlogit", "mcm"]) == ["mcm", "mis"]
    assert resolve_scores(["all"]) == list(SCORES)
    with pytest.raises(ValueError, match=r"known: .*mcm"):
        build_score("nope")
    with pytest.raises(RuntimeError, match="fit"):
        build_score("mcm")(toy[1])
    with pytest.raises(ValueError, match="text_features"):
        build_score("mcm").fit(InDistribution())
    with pytest.raises(ValueError, match="temperature"):
        build_score("mcm", temperature=0)

"""Scores: every registered one on a constructed ID/OOD pair, and each against a straightforward implementation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from utils.scores import (
    SCORES,
    InDistribution,
    MultiMatching,
    NegativeLabels,
    Score,
    build_score,
    mine_negative_labels,
    needs_text,
    resolve_scores,
)  # fmt: skip
from utils.scores.label_mass import id_probability
from utils.scores.logistic_regression import fit_linear_probe
from utils.scores.mahalanobis import fit_class_gaussians
from utils.scores.pood import Head
from utils.scores.zero_shot import MCM, NegEntropy, SoftmaxVariance

DIM, CLASSES = 16, 4
# Derived, not measured: float32 cosines of unit vectors in DIM dimensions, ours and the reference's (scikit-learn
# works from the float32 inputs, whose norms are 1 within DIM·u), agree within 4·DIM·u (u = 2^-24). KNN results
# are compared as cosines: distances sqrt(2 − 2 cos) magnify any error near cos = 1.
COSINE_TOLERANCE = 4 * DIM * float(np.finfo(np.float32).eps) / 2


def _cosine(distances: np.ndarray) -> np.ndarray:
    """The cosine behind a distance between unit vectors (or a KNN score, its negation): 1 − d²/2."""
    return 1 - np.asarray(distances, dtype=np.float64) ** 2 / 2


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _around(directions: np.ndarray, count: int, rng: np.random.Generator, spread: float = 0.15) -> np.ndarray:
    return _unit(directions + spread * rng.normal(size=(count, DIM)))


@pytest.fixture(scope="module")
def toy():
    """ID prompts on axes 0-3, ID images near their prompt, OOD images near axes 4-5 (where the OOD names sit)."""
    rng = np.random.default_rng(0)
    eye = np.eye(DIM, dtype=np.float32)
    text = eye[:CLASSES]
    train_labels = np.repeat(np.arange(CLASSES), 50)
    train = _around(text[train_labels], len(train_labels), rng)
    test_labels = rng.integers(0, CLASSES, size=40)
    id_feats = _around(text[test_labels], 40, rng)
    ood_feats = _around(eye[4 + rng.integers(0, 2, size=30)], 30, rng)
    ind = InDistribution(text_features=text, train_features=train, train_labels=train_labels)
    # One value per score input name (what a run's resolvers supply); a new score with a new input adds its value.
    extras = {
        "temperature": 1.0,
        "k": 50,
        "seed": 0,
        "device": "cpu",
        "logit_scale": 100.0,
        "ood_text_features": eye[4:6],  # the OOD set's class names sit where the OOD images are
        "negative_labels": NegativeLabels(eye[:CLASSES], eye[4:8]),  # the ID labels' own prompts and the negatives
        "csp_labels": NegativeLabels(eye[:CLASSES], eye[4:8]),  # CSP's: the same kind of input, its own mining
        "adaneg_labels": NegativeLabels(eye[:CLASSES], eye[4:8]),  # AdaNeg's too
        "adaneg_groups": 2,
        "adaneg_memory": 10,
        "adaneg_threshold": 0.5,
        "adaneg_gap": 0.5,
        "adaneg_lambda": 0.1,
        "adaneg_beta": 5,
        "adaneg_proxy": "task",
        "adaneg_entropy": "release",
        "adaneg_batch": 16,
        "neg_groups": 2,
        "negrefine_top_k": 2,
        "negrefine_weight": 2.0,
        "ood_prompt_features": _unit(eye[4:5] + eye[5:6]),  # the "OOD" prompt too
        # learned prompts, [contexts, names, D], where the OOD images are: NegPrompt's negatives, ID-Like's OOD prompts
        "negative_prompt_features": np.stack([_unit(eye[4:8]), _unit(eye[4:8] + 0.1 * eye[:4])]),
        "idlike_ood_features": eye[4:8][:, None],
        "groups": [["c0", "c1"], ["c2", "c3"]],
        "classnames": ["c0", "c1", "c2", "c3"],
        "others_features": _unit(np.stack([eye[4] + eye[5], eye[4] + eye[5]])),
        "gl_lambda": 1.0,
        "envisioned_features": eye[4:6],  # EOE's envisioned outlier names, where the OOD images are
        # NegRefine: NegLabel's labels, and a prompt for every (ID label, negative) pair, "c and n" halfway between
        "negrefine_labels": MultiMatching(
            NegativeLabels(eye[:CLASSES], eye[4:8]),
            {(i, j): 4 * i + j for i in range(CLASSES) for j in range(4)},
            _unit(np.repeat(eye[:CLASSES], 4, axis=0) + np.tile(eye[4:8], (CLASSES, 1))),
        ),
        "eoe_beta": 0.25,
        # pytorch-ood's detectors read a linear head: the zero-shot one, at 5x since the toy's prompts are orthogonal
        # (cosine gaps ~0.9 where CLIP's are ~0.1), so its softmaxes saturate no more than CLIP's at 100x
        "head": Head.zero_shot(text, 5.0),
    }
    return ind, id_feats, ood_feats, test_labels, extras


def _in_view(name: str, features: np.ndarray, patches: int = 4) -> np.ndarray:
    """Rows as the score's view holds them: `local` = the global embedding, then patches (here: noisy copies)."""
    if SCORES[name].view != "local":
        return features
    rng = np.random.default_rng(11)
    tokens = [features] + [_unit(features + 0.1 * rng.normal(size=features.shape)) for _ in range(patches)]
    return np.stack(tokens, axis=1).reshape(len(features), -1)


def _build(name: str, extras: dict, **kwargs) -> object:
    """A score built from the values of the inputs it declares, as a run would supply them."""
    declared = {i: extras[i] for i in SCORES[name].arguments() if i not in kwargs}
    return build_score(name, **declared, **kwargs)


@pytest.mark.parametrize("name", sorted(SCORES))
def test_declarations_are_consistent(name):
    from utils.features.images import VIEWS

    cls = SCORES[name]
    assert cls.view in VIEWS
    assert cls.sweep_over is None or cls.sweep_over in {s.name for s in cls.settings}
    assert not {s.name for s in cls.settings} & set(cls.inputs)  # a setting is declared as one, not as an input
    assert set(cls.needs) <= {"text_features", "train_features", "train_labels"}
    assert (cls.classifier is None) == (cls.logits is Score.logits)  # a classifier gives its logits


@pytest.mark.parametrize("name", sorted(SCORES))
def test_shape_finite_and_ranking(name, toy):
    ind, id_feats, ood_feats, _, extras = toy
    id_feats, ood_feats = _in_view(name, id_feats), _in_view(name, ood_feats)
    score = _build(name, extras).fit(ind)
    s_id, s_ood = score(id_feats), score(ood_feats)
    assert s_id.shape == (40,) and s_ood.shape == (30,)
    assert np.isfinite(s_id).all() and np.isfinite(s_ood).all()
    assert s_id.min() > s_ood.max()  # higher = more in-distribution
    assert np.allclose(score(torch.from_numpy(id_feats)), s_id)  # torch input gives the same
    assert np.allclose(score(id_feats.astype(np.float16)), s_id, rtol=1e-2, atol=1e-2)  # the cache's float16 too


@pytest.mark.parametrize("name", sorted(SCORES))
def test_needs_are_checked(name, toy):
    _, id_feats, _, _, extras = toy
    score = _build(name, extras)
    with pytest.raises(RuntimeError, match="fit"):
        score(id_feats)
    if SCORES[name].needs:
        with pytest.raises(ValueError, match="needs"):
            score.fit(InDistribution())


def _softmax(s: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(s).double(), dim=1).numpy()


@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0])
def test_zero_shot_formulas(toy, temperature):
    """Each score's value (the softmax scores' back from their exact ranking transform) against its formula."""
    ind, id_feats, _, _, _ = toy
    s = (id_feats @ ind.text_features.T).astype(np.float64)
    p = _softmax(s / temperature)
    plain = {"mcm": MCM.plain, "entropy": lambda v: NegEntropy.plain(v, CLASSES),
             "var": lambda v: SoftmaxVariance.plain(v, CLASSES)}  # fmt: skip
    expected = {
        "mcm": p.max(1),
        "energy": temperature * torch.logsumexp(torch.from_numpy(s / temperature), dim=1).numpy(),
        "entropy": (p * np.log(p)).sum(1),
        "var": p.var(1),
    }
    for name, value in expected.items():
        got = build_score(name, temperature=temperature).fit(ind)(id_feats)
        assert np.allclose(plain.get(name, np.asarray)(got), value, rtol=1e-6, atol=1e-12), name
    assert np.array_equal(build_score("mis").fit(ind)(id_feats), s.max(1))


def _exact_reference(s: np.ndarray, temperature: float) -> dict[str, list[float]]:
    """max softmax, −H and Σ p² of each row in 400-digit arithmetic (mpmath), as the ranks to match."""
    import mpmath  # sympy's, which torch requires

    out: dict[str, list[float]] = {"mcm": [], "entropy": [], "var": []}
    with mpmath.workdps(400):
        for row in s:
            e = [mpmath.exp(mpmath.mpf(float(v)) / temperature) for v in row]
            p = [x / sum(e) for x in e]
            out["mcm"].append(max(p))
            out["entropy"].append(sum(q * mpmath.log(q) for q in p))
            out["var"].append(sum(q * q for q in p))
    return out


def test_softmax_scores_rank_exactly_at_clips_temperature():
    """T = 0.01 on well-separated images: p_max is within 1e-17 of 1 (float64's 1.0), yet no two images tie and the
    order is the exact one (MCM, entropy and var rank by log-space transforms of their values)."""
    rng = np.random.default_rng(5)
    text = np.eye(CLASSES, DIM, dtype=np.float32)
    labels = rng.integers(0, CLASSES, 60)
    gaps = rng.uniform(0.4, 0.6, 60)  # cosine gap of the true class over the others: 40-60 logits at T = 0.01
    feats = (0.2 * np.ones((60, DIM)) + gaps[:, None] * np.eye(DIM)[labels]).astype(np.float32)
    feats[:, :CLASSES] += rng.uniform(0, 0.01, (60, CLASSES)).astype(np.float32)  # other classes: distinct cosines
    s = (feats @ text.T).astype(np.float64)
    naive = _softmax(s / 0.01).max(1)
    assert len(np.unique(naive)) < 10  # the float64 probabilities tie: what the ranking must not do
    reference = _exact_reference(s, 0.01)
    ind = InDistribution(text_features=text)
    for name in ("mcm", "entropy", "var"):
        got = build_score(name, temperature=0.01).fit(ind)(feats)
        assert len(np.unique(got)) == 60, name
        exact = sorted(range(60), key=lambda i: reference[name][i])
        assert np.argsort(got, kind="stable").tolist() == exact, name


def test_softmax_scores_rank_exactly_near_uniform():
    """T = 300 on 64 nearly equal similarities: every p_k within 1e-8 of 1/K, where 1 − Σ p² and H = log K − tiny
    lose the differences in float64 (ranking by either gets almost every pair wrong); ours is the exact order."""
    rng = np.random.default_rng(6)
    text = np.eye(64, dtype=np.float32)
    feats = (0.3 + rng.uniform(0, 1e-4, (60, 64))).astype(np.float32)
    s = (feats @ text.T).astype(np.float64)
    reference = _exact_reference(s, 300.0)
    ind = InDistribution(text_features=text)
    for name in ("mcm", "entropy", "var"):
        got = build_score(name, temperature=300.0).fit(ind)(feats)
        exact = sorted(range(60), key=lambda i: reference[name][i])
        assert np.argsort(got, kind="stable").tolist() == exact, name


LABEL_MASS_EXTRA = {
    "oracle": "ood_text_features",
    "kplus1": "ood_prompt_features",
    "idlike": "idlike_ood_features",
}


@pytest.mark.parametrize("name", sorted(LABEL_MASS_EXTRA))
def test_label_mass_is_the_log_odds_of_the_id_share_of_a_joint_softmax(toy, name):
    ind, id_feats, ood_feats, _, extras = toy
    feats = np.r_[id_feats, ood_feats, _separated(np.random.default_rng(4), 40, gap=(-0.1, 0.1))]
    extra = np.asarray(extras[LABEL_MASS_EXTRA[name]]).reshape(-1, ind.text_features.shape[1])
    joint = _softmax(100.0 * feats @ np.r_[ind.text_features, extra].T)
    p_id = joint[:, :CLASSES].sum(1)
    got = _build(name, extras).fit(ind)(feats)
    assert np.allclose(id_probability(got), p_id, atol=1e-9)
    moderate = (p_id > 1e-6) & (p_id < 1 - 1e-6)
    assert moderate.sum() >= 10
    p = p_id[moderate]
    assert np.allclose(got[moderate], np.log(p / (1 - p)), rtol=0, atol=2 * 100 * COSINE_TOLERANCE)


def _separated(rng: np.random.Generator, n: int, gap: tuple[float, float] = (0.4, 0.6)) -> np.ndarray:
    """Unit images with cosine b + gap to one ID prompt (axes 0-3) and b to one extra label (axes 4-7)."""
    b, gaps = rng.uniform(0.0, 0.3, size=n), rng.uniform(*gap, size=n)
    x = (b + gaps)[:, None] * np.eye(DIM)[rng.integers(0, CLASSES, n)] + b[:, None] * np.eye(DIM)[
        4 + rng.integers(0, 4, n)
    ]
    return _unit(x + np.sqrt(1 - (b + gaps) ** 2 - b**2)[:, None] * np.eye(DIM)[DIM - 1])


def _exact_log_odds(feats: np.ndarray, id_text: np.ndarray, extra: np.ndarray) -> list:
    """logit(p_ID) of the joint softmax at 60 significant digits (mpmath), straight from the definition."""
    import mpmath

    mpmath.mp.dps = 60
    values = []
    for row in feats.astype(np.float64):
        e_id = [mpmath.exp(100 * mpmath.mpf(float(v))) for v in id_text.astype(np.float64) @ row]
        e_extra = [mpmath.exp(100 * mpmath.mpf(float(v))) for v in extra.astype(np.float64) @ row]
        p_id = mpmath.fsum(e_id) / (mpmath.fsum(e_id) + mpmath.fsum(e_extra))
        values.append(mpmath.log(p_id / (1 - p_id)))
    return values


@pytest.mark.parametrize("name", sorted(LABEL_MASS_EXTRA))
def test_label_mass_never_saturates_and_ranks_as_the_exact_id_share(toy, name):
    """Well-separated images: p_ID = 1.0 exactly in float64 for most (ties), the log-odds are all distinct."""
    ind, _, _, _, extras = toy
    extra = np.asarray(extras[LABEL_MASS_EXTRA[name]]).reshape(-1, ind.text_features.shape[1])
    feats = _separated(np.random.default_rng(5), 60)
    joint = _softmax(100.0 * feats.astype(np.float64) @ np.r_[ind.text_features, extra].T)
    assert (joint[:, :CLASSES].sum(1) == 1.0).sum() >= 30  # what ranking by p_ID would tie
    got = _build(name, extras).fit(ind)(feats)
    exact = _exact_log_odds(feats, ind.text_features, extra)
    assert len(np.unique(got)) == len(got)
    assert np.array_equal(np.argsort(got), np.argsort(np.array(exact, dtype=np.float64)))
    assert np.allclose(got, np.array(exact, dtype=np.float64), rtol=0, atol=2 * 100 * COSINE_TOLERANCE)  # float32 s


def test_group_score_ranks_as_minus_the_smallest_others_probability(toy):
    ind, id_feats, ood_feats, _, _ = toy
    feats = np.r_[id_feats, ood_feats]
    others = _unit(np.random.default_rng(2).normal(size=(2, DIM)))
    groups = [[0, 1], [2, 3]]
    named = {"groups": [["c0", "c1"], ["c2", "c3"]], "classnames": ["c0", "c1", "c2", "c3"]}
    got = build_score("group", **named, others_features=others).fit(ind)(feats)
    p_others = np.stack([_softmax(100.0 * feats @ np.r_[ind.text_features[g], others[k : k + 1]].T)[:, -1]
                         for k, g in enumerate(groups)], axis=1)  # fmt: skip
    assert np.allclose(id_probability(got), 1 - p_others.min(1), atol=1e-9)  # −min_g p_others, shifted by 1
    separated = _separated(np.random.default_rng(6), 60)
    got = build_score("group", **named, others_features=others).fit(ind)(separated)
    assert len(np.unique(got)) == len(got)


def _released_neglabel(feats, id_text, negatives, groups, seed):
    """XueJiang16/NegLabel clip_ood.py restated: drop the last M mod G negatives, permute, cut into G groups, average
    each group's ID mass of softmax(100 · [s_ID, s_group])."""
    kept = len(negatives) - len(negatives) % groups
    shuffled = negatives[:kept][np.random.default_rng(seed).permutation(kept)]
    masses = []
    for group in np.split(shuffled, groups):
        joint = _softmax(100.0 * feats.astype(np.float64) @ np.r_[id_text, group].T.astype(np.float64))
        masses.append(joint[:, : len(id_text)].sum(1))
    return np.mean(masses, axis=0)


@pytest.mark.parametrize("groups", [1, 3, 7])
def test_neglabel_is_the_released_grouped_id_mass(groups):
    rng = np.random.default_rng(8)
    id_text, negatives = _unit(rng.normal(size=(5, DIM))), _unit(rng.normal(size=(23, DIM)))
    feats = _unit(id_text[rng.integers(0, 5, 40)] + 3.0 * rng.normal(size=(40, DIM)))
    score = build_score("neglabel", negative_labels=NegativeLabels(id_text, negatives), neg_groups=groups, seed=4)
    got = score.fit(InDistribution())(feats)
    expected = _released_neglabel(feats, id_text, negatives, groups, seed=4)
    assert ((expected > 0.01) & (expected < 0.99)).sum() >= 5  # enough rows where the probabilities say something
    # float32 cosines: logits within 2·100·COSINE_TOLERANCE, probabilities (slope ≤ 1/4) within a quarter of that
    assert np.allclose(id_probability(got), expected, rtol=0, atol=50 * COSINE_TOLERANCE)
    assert score.details() == {"neg_groups": groups, "negatives": 23 - 23 % groups, "mined": 23}


def test_neglabel_groups_of_identical_negatives_have_the_closed_form():
    """All M negatives the same label v: each group of M/G is v counted M/G times, whatever the permutation."""
    rng = np.random.default_rng(9)
    id_text, v = _unit(rng.normal(size=(4, DIM))), _unit(rng.normal(size=(1, DIM)))
    feats = _unit(rng.normal(size=(30, DIM))).astype(np.float64)
    score = build_score("neglabel", negative_labels=NegativeLabels(id_text, np.repeat(v, 12, axis=0)), neg_groups=4)
    closed = np.log(np.exp(100 * feats @ id_text.T).sum(1)) - (100 * feats @ v[0] + np.log(12 / 4))
    assert np.allclose(score.fit(InDistribution())(feats), closed, rtol=0, atol=2 * 100 * COSINE_TOLERANCE)


def test_neglabel_one_group_is_the_ungrouped_score_and_never_saturates(toy):
    ind = toy[0]
    feats = _separated(np.random.default_rng(5), 60)
    labels = NegativeLabels(ind.text_features, np.eye(DIM, dtype=np.float32)[4:8])
    got = build_score("neglabel", negative_labels=labels, neg_groups=1).fit(ind)(feats)
    assert np.array_equal(got, build_score("oracle", ood_text_features=labels.negatives).fit(ind)(feats))
    grouped = build_score("neglabel", negative_labels=labels, neg_groups=2).fit(ind)(feats)
    assert len(np.unique(grouped)) == len(grouped)  # mean of p_ID = 1.0 in float64 for most rows; not here


def test_label_mass_needs_its_labels():
    with pytest.raises(ValueError, match="ood_text_features"):
        build_score("oracle")
    with pytest.raises(ValueError, match="negative_labels"):
        build_score("neglabel")
    with pytest.raises(ValueError, match="non-empty"):
        build_score("neglabel", negative_labels=NegativeLabels(np.eye(DIM)[:2], np.zeros((0, DIM))))
    with pytest.raises(ValueError, match=r"classes \['c9'\]"):
        build_score("group", groups=[["c0", "c9"]], classnames=["c0", "c1"], others_features=np.eye(DIM)[:1])


def test_mine_negative_labels_matches_the_rule():
    rng = np.random.default_rng(1)
    id_text = _unit(rng.normal(size=(10, DIM)))
    candidates = _unit(rng.normal(size=(200, DIM)))
    picked = mine_negative_labels(candidates, id_text, fraction=0.15, percentile=95)
    eta = np.array([np.percentile(c @ id_text.T, 95) for c in candidates])
    assert len(picked) == 30
    assert set(picked) == set(np.argsort(eta)[:30])
    assert eta[picked].max() <= np.sort(eta)[30]


def test_csp_mining_never_keeps_a_candidate_above_095_to_an_id_label():
    """CSP's rule (sim[maximum > 0.95] = 1.0): a candidate almost equal to one ID label but far from the other 39
    has the lowest 95th percentile, and is the first kept without the rule, never with it."""
    rng = np.random.default_rng(2)
    id_text = np.eye(64)[:40]  # 40 ID labels; the candidates below sit in the same 64 dimensions
    near = _unit(np.eye(64)[:1] + 0.05 * np.eye(64)[63:])  # cosine 0.999 to ID label 0, 0 to the others
    candidates = np.r_[near, _unit(np.c_[rng.uniform(0.1, 1, (39, 40)), rng.normal(size=(39, 24))])]
    assert (candidates[0] @ id_text.T).max() > 0.95
    plain = mine_negative_labels(candidates, id_text, fraction=0.1, percentile=95)
    csp = mine_negative_labels(candidates, id_text, fraction=0.1, percentile=95, exclude_above=0.95)
    assert plain[0] == 0 and 0 not in csp
    fifth = int(np.argsort([np.percentile(c @ id_text.T, 95) for c in candidates])[4])
    assert list(csp) == [*plain[1:], fifth]


def _released_eoe(feats, id_text, envisioned, temperature, beta):
    """tmlr-group/EOE 20fa95e detection_util.py get_ood_scores_clip restated: one softmax of cos / T over the ID and
    envisioned prompts; max ID probability − β · max envisioned probability."""
    total = torch.from_numpy(np.r_[id_text, envisioned]).double()
    total /= total.norm(dim=-1, keepdim=True)
    output = torch.from_numpy(feats).double() @ total.T
    smax = torch.softmax(output / temperature, dim=1).numpy()
    return np.max(smax[:, : len(id_text)], axis=1) - beta * np.max(smax[:, len(id_text) :], axis=1)


@pytest.mark.parametrize(("temperature", "beta"), [(1.0, 0.25), (0.05, 1.0), (3.0, 0.0)])
def test_eoe_is_the_released_score(temperature, beta):
    rng = np.random.default_rng(12)
    id_text, envisioned = _unit(rng.normal(size=(6, DIM))), _unit(rng.normal(size=(9, DIM)))
    feats = _unit(rng.normal(size=(50, DIM))).astype(np.float64)
    score = build_score("eoe", envisioned_features=envisioned, temperature=temperature, eoe_beta=beta)
    got = score.fit(InDistribution(text_features=id_text))(feats)
    expected = _released_eoe(feats, id_text, envisioned, temperature, beta)
    assert np.allclose(got, expected, rtol=0, atol=1e-6)  # float32 unit vectors, renormalised in float64 there
    assert score.details() == {"envisioned": 9}


def test_eoe_names_are_cleaned_as_released():
    """Lowercased, each once, ID class names (in any case) removed; order of first appearance kept."""
    from utils.scores import envisioned_names

    lines = ["# from an LLM", "Black Stone", "river ", "", "black stone", "Tabby cat", "RIVER", "ginkgo tree"]
    assert envisioned_names(lines, ["tabby cat", "Husky"]) == ["black stone", "river", "ginkgo tree"]
    with pytest.raises(ValueError, match="envisioned_features"):
        build_score("eoe")


def _released_adaneg(stream, id_text, negatives, groups, length, proxy, batch, high, low, scale=100.0, lam=0.1,
                     beta=5):  # fmt: skip
    """YBZh/OpenOOD-VLM 694592a ttaprompt_postprocessor.py TTAPromptPostprocessor_noadagap restated in torch, batch by
    batch over `stream` (rows already in stream order): static grouped score (the last M mod G negatives dropped,
    torch.manual_seed(0) + randperm), per-sample writes (ID gate, then the negative gate) whose entropy is taken of
    float16 probabilities as its fp16 model's (NaN where one is 0), replacement by torch.sort's last, then the
    proxies, the grouped score on them, S_ada + λ S_nl."""
    text = torch.from_numpy(np.r_[id_text, negatives]).double()
    classes, drop = len(id_text), len(negatives) % groups
    feat_memory = torch.cat([text[:, None, :], torch.zeros(len(text), length, text.shape[1], dtype=torch.float64)], 1)
    indice_memory, entropy_memory = torch.ones(len(text)), torch.zeros(len(text), length + 1)
    torch.manual_seed(0)
    idx = torch.randperm(len(negatives) - drop)

    def grouping(output):
        pos, neg = output[:, :classes], output[:, classes:]
        neg = (neg[:, :-drop] if drop else neg).T[idx].T.reshape(len(output), groups, -1)
        joint = [torch.cat([pos, neg[:, i, :]], dim=-1).softmax(dim=-1) for i in range(groups)]
        return torch.stack([mass[:, :classes].sum(dim=-1) for mass in joint], dim=-1).mean(dim=-1)

    def write(cate, feature, logits):
        probabilities = torch.softmax(logits, 0).half()
        current = -(probabilities * torch.log(probabilities + 1e-8)).sum()
        if indice_memory[cate] == length:
            if (current < entropy_memory[cate]).sum() == 0:
                return  # the entropy of the current image is very large (or NaN)
            _, indice = torch.sort(entropy_memory[cate], stable=True)
            feat_memory[cate][indice[-1]], entropy_memory[cate][indice[-1]] = feature, current
        else:
            feat_memory[cate][indice_memory[cate].long()] = feature
            entropy_memory[cate][indice_memory[cate].long()] = current
            indice_memory[cate] += 1

    scores = []
    for start in range(0, len(stream), batch):
        x = torch.from_numpy(stream[start : start + batch]).double()
        output_vanilla = scale * x @ text.T
        conf_in_vanilla = grouping(output_vanilla)
        for i in torch.nonzero(conf_in_vanilla > high).flatten().tolist():
            write(int(torch.argmax(output_vanilla[i, :classes])), x[i], output_vanilla[i, :classes])
        for i in torch.nonzero(conf_in_vanilla < low).flatten().tolist():
            negative = output_vanilla[i, classes:]
            write(classes + int(torch.argmax(negative)), x[i], negative)
        if proxy == "task":
            proxies = feat_memory.mean(1)
            proxies = proxies / proxies.norm(dim=-1, keepdim=True)
            output = scale * x @ proxies.T
        else:
            weights = torch.exp(-beta * (1 - torch.einsum("lpd,bd->blp", feat_memory, x)))
            proxies = torch.einsum("blp,lpd->bld", weights, feat_memory)
            proxies = proxies / proxies.norm(dim=-1, keepdim=True)
            output = scale * torch.einsum("bd,bld->bl", x, proxies)
        scores.append(grouping(output) + lam * conf_in_vanilla)
    stored = entropy_memory[:, 1:length]
    finite = int((~torch.isnan(stored) & (stored != 0)).sum())
    return torch.cat(scores).numpy(), int((indice_memory == length).sum()), int(torch.isnan(stored).sum()), finite


@pytest.mark.parametrize(("proxy", "scale"), [("task", 100.0), ("sample", 100.0), ("task", 20.0)])
def test_adaneg_is_the_released_stream(proxy, scale):
    """120 images streamed in batches of 16 against 6 ID labels and 22 negatives (5 groups: 2 dropped), memory
    length 4, γ = 0.4 (gates 0.7 and 0.2): slots fill, with NaN entropies (float16 underflow) and, at scale 20,
    finite ones; our scores equal the release's loop on the same stream order."""
    rng = np.random.default_rng(21)
    id_text, negatives = _unit(rng.normal(size=(6, DIM))), _unit(rng.normal(size=(22, DIM)))
    near_id = _unit(id_text[rng.integers(0, 6, 80)] + 0.35 * rng.normal(size=(80, DIM)))
    near_negative = _unit(negatives[rng.integers(0, 22, 40)] + 0.35 * rng.normal(size=(40, DIM)))
    score = build_score("adaneg", adaneg_labels=NegativeLabels(id_text, negatives), adaneg_groups=5, adaneg_memory=4,
                        adaneg_batch=16, adaneg_proxy=proxy, adaneg_threshold=0.4, seed=7,
                        logit_scale=scale).fit(InDistribution())  # fmt: skip
    got_id, got_ood = score.stream([near_id, near_negative])
    rows = np.r_[near_id, near_negative].astype(np.float64)
    order = np.random.default_rng(7).permutation(len(rows))
    released, full, nan, finite = _released_adaneg(rows[order], id_text, negatives, 5, 4, proxy, 16, 0.7, 0.2, scale)
    expected = np.empty(len(rows))
    expected[order] = released
    assert full >= 3 and nan > 0 and (finite > 0 or scale == 100.0)  # slots fill; NaN and (at 20) finite entropies
    assert np.allclose(np.r_[got_id, got_ood], expected, rtol=0, atol=1e-6)
    assert np.array_equal(score.stream([near_id, near_negative])[0], got_id)  # the same order, the same scores


def test_adaneg_exact_entropy_gives_up_the_least_sure_image_never_the_text():
    from utils.scores.adaptive import Memory

    memory = Memory(np.eye(3, dtype=np.float32)[:1], length=3, release=False)  # holds 2 images
    for value, entropy in ((1.0, 0.5), (2.0, 0.9)):
        memory.write(0, np.full(3, value, np.float32), entropy)
    memory.write(0, np.full(3, 3.0, np.float32), 1.2)  # less sure than both: not kept
    memory.write(0, np.full(3, 4.0, np.float32), -1e-8)  # surer than both: replaces the 0.9 one, not the text
    assert memory.features[0, :, 0].tolist() == [1.0, 1.0, 4.0, 0.0]
    release = Memory(np.eye(3, dtype=np.float32)[:1], length=3)
    release.write(0, np.ones(3, np.float32), float("nan"))
    release.write(0, np.full(3, 2.0, np.float32), 0.4)
    release.write(0, np.full(3, 3.0, np.float32), float("nan"))  # a NaN never replaces
    release.write(0, np.full(3, 4.0, np.float32), 0.1)  # replaces the NaN entry first
    assert release.features[0, :, 0].tolist() == [1.0, 4.0, 2.0, 0.0]


def test_adaneg_scores_depend_on_the_order_and_the_company():
    rng = np.random.default_rng(22)
    labels = NegativeLabels(_unit(rng.normal(size=(6, DIM))), _unit(rng.normal(size=(20, DIM))))
    images = _unit(labels.id_features[rng.integers(0, 6, 80)] + 0.35 * rng.normal(size=(80, DIM)))
    others = _unit(labels.negatives[rng.integers(0, 20, 40)] + 0.35 * rng.normal(size=(40, DIM)))
    one, two = (build_score("adaneg", adaneg_labels=labels, adaneg_groups=5, adaneg_batch=8, seed=s).fit(None)
                for s in (1, 2))  # fmt: skip
    alone = one(images)
    assert not np.allclose(alone, two(images))  # another order, other scores
    assert not np.allclose(alone, one.stream([images, others])[0])  # other images in the stream, other scores
    assert np.array_equal(alone, one(images))
    assert one.details() == {"stream_seed": 1, "stream_batch": 8, "images_per_label": 9, "adaneg_groups": 5}
    assert np.array_equal(one.columns, two.columns)  # the groups: the release's torch seed 0, not the stream's


def test_negrefine_without_a_pair_prompt_is_one_clear_error():
    eye = np.eye(DIM, dtype=np.float32)
    labels = MultiMatching(NegativeLabels(eye[:3], eye[3:9]), {(0, 0): 0}, eye[:1])
    score = build_score("negrefine", negrefine_labels=labels, neg_groups=2, negrefine_top_k=1).fit(None)
    assert np.isfinite(score(_unit(eye[:1] + eye[3:4])))  # its top pair is (ID 0, negative 0): in the table
    with pytest.raises(ValueError, match=r"no prompt for the pair \(1, 0\)"):
        score(_unit(eye[1:2] + eye[3:4]))
    with pytest.raises(ValueError, match="negrefine_labels"):
        build_score("negrefine")


def test_csp_is_neglabels_grouped_mass_over_its_own_labels():
    rng = np.random.default_rng(8)
    id_text, negatives = _unit(rng.normal(size=(5, DIM))), _unit(rng.normal(size=(23, DIM)))
    feats = _unit(id_text[rng.integers(0, 5, 40)] + 3.0 * rng.normal(size=(40, DIM)))
    labels = NegativeLabels(id_text, negatives)
    csp = build_score("csp", csp_labels=labels, neg_groups=3, seed=4).fit(InDistribution())(feats)
    assert np.array_equal(csp, build_score("neglabel", negative_labels=labels, neg_groups=3, seed=4).fit(None)(feats))
    with pytest.raises(ValueError, match="csp_labels"):
        build_score("csp")


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_matches_brute_force(toy, k):
    ind, id_feats, ood_feats, _, _ = toy
    feats = np.r_[id_feats, ood_feats]
    distances, _ = NearestNeighbors(n_neighbors=k).fit(ind.train_features).kneighbors(feats)
    got = build_score("knn", k=k).fit(ind)(feats)
    assert (got <= 0).all() and np.abs(_cosine(got) - _cosine(distances[:, k - 1])).max() <= COSINE_TOLERANCE


@pytest.mark.parametrize("k", [1, 7, 50, 150])
def test_resident_bank_search_matches_float32_brute_force(k):
    """The GPU path (half-precision search, float32 re-rank), run on CPU tensors (bfloat16 there): distances within
    1e-3 of float32 brute force; in fact the same float32 similarities, since the re-rank is exact."""
    from utils.scores.knn import distance_from_similarity, fits_on_device, top_similarities

    rng = np.random.default_rng(k)
    bank = _unit(rng.normal(size=(2000, DIM)) + 2.0 * np.eye(DIM)[rng.integers(0, 4, 2000)]).astype(np.float16)
    queries = _unit(rng.normal(size=(120, DIM)) + 2.0 * np.eye(DIM)[rng.integers(0, 6, 120)])
    resident = top_similarities(queries, bank, k, resident=True)
    streamed = top_similarities(queries, bank, k, resident=False)
    brute = np.sort(queries.astype(np.float64) @ _unit(bank.astype(np.float32)).T.astype(np.float64), axis=1)[:, ::-1]
    assert resident.shape == (120, k)
    assert np.abs(distance_from_similarity(resident) - distance_from_similarity(brute[:, :k])).max() < 1e-3
    assert np.abs(resident - streamed).max() <= COSINE_TOLERANCE
    assert not fits_on_device(10, DIM, "cpu")  # CPU: streamed, as measured fastest there


def test_knn_sweep_is_one_search(toy, monkeypatch):
    import utils.scores.knn as knn_module

    ind, id_feats, _, _, _ = toy
    calls = []
    original = knn_module.top_similarities
    monkeypatch.setattr(knn_module, "top_similarities", lambda *a: calls.append(a[2]) or original(*a))
    knn = build_score("knn", k=20).fit(ind)
    sweep = knn.sweep(id_feats, [1, 5, 20])
    assert calls == [20]
    for k in (1, 5, 20):
        assert np.array_equal(sweep[k], build_score("knn", k=k).fit(ind)(id_feats))  # the same arithmetic


@pytest.fixture
def float16_bank(toy, tmp_path):
    """The toy training features as a memory-mapped float16 file, as the cache stores them."""
    ind = toy[0]
    bank = np.lib.format.open_memmap(tmp_path / "bank.npy", mode="w+", dtype=np.float16, shape=ind.train_features.shape)
    bank[:] = ind.train_features
    bank.flush()
    return np.load(tmp_path / "bank.npy", mmap_mode="r"), ind.train_labels


@pytest.mark.parametrize(("bank_chunk", "query_chunk"), [(7, 5), (64, 1024), (10_000, 3)])
def test_knn_streams_a_float16_bank_in_blocks(toy, float16_bank, monkeypatch, bank_chunk, query_chunk):
    """Any block sizes give sklearn's k-th distances on the float16 bank (the running top-k merge is exact)."""
    import utils.scores.knn as knn_module

    monkeypatch.setattr(knn_module, "BANK_CHUNK", bank_chunk)
    monkeypatch.setattr(knn_module, "QUERY_CHUNK", query_chunk)
    bank, _ = float16_bank
    _, id_feats, ood_feats, _, _ = toy
    feats = np.r_[id_feats, ood_feats]
    reference = bank.astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    distances, _ = NearestNeighbors(n_neighbors=30).fit(reference).kneighbors(feats)
    sweep = build_score("knn", k=30).fit(InDistribution(train_features=bank)).sweep(feats, [1, 10, 30])
    for k in (1, 10, 30):
        assert np.abs(_cosine(sweep[k]) - _cosine(distances[:, k - 1])).max() <= COSINE_TOLERANCE


def test_linear_probe_streams_a_float16_bank_in_blocks(toy, float16_bank, monkeypatch):
    """Blocks of 16 rows from a float16 memmap: the same probe as one float32 block of the same values."""
    import utils.scores.logistic_regression as lp

    bank, labels = float16_bank
    whole = fit_linear_probe(bank.astype(np.float32), labels, Cs=[0.1, 10.0])
    monkeypatch.setattr(lp, "ROW_CHUNK", 16)
    blocks = lp.to_blocks(bank, labels)
    assert len(blocks) == -(-len(labels) // 16) and blocks[0][0].dtype == torch.float16
    streamed = fit_linear_probe(bank, labels, Cs=[0.1, 10.0])
    assert streamed.C == whole.C
    assert np.abs(streamed.logits(toy[1]) - whole.logits(toy[1])).max() < 1e-3


def test_knn_k_larger_than_bank(toy):
    with pytest.raises(ValueError, match="at least k"):
        build_score("knn", k=10_000).fit(toy[0])


@pytest.mark.parametrize("chunk", [1, 3, 64, 10_000])
def test_class_means_do_not_depend_on_batch_size(toy, chunk):
    """The predecessor averaged with batch indices; here any chunking gives the exact class statistics."""
    ind = toy[0]
    g = fit_class_gaussians(ind.train_features, ind.train_labels, chunk=chunk)
    x, y = ind.train_features.astype(np.float64), ind.train_labels
    means = np.stack([x[y == c].mean(0) for c in range(CLASSES)])
    centred = x - means[y]
    assert np.allclose(g.means, means, atol=1e-10)
    assert np.allclose(g.precision, np.linalg.pinv(centred.T @ centred / len(x)), rtol=1e-6, atol=1e-6)


def test_mahalanobis_and_relative_against_loops(toy):
    ind, id_feats, ood_feats, _, _ = toy
    feats = np.r_[id_feats, ood_feats].astype(np.float64)
    x, y = ind.train_features.astype(np.float64), ind.train_labels
    means = np.stack([x[y == c].mean(0) for c in range(CLASSES)])
    shared = np.linalg.pinv(np.cov((x - means[y]).T, bias=True))
    background = np.linalg.pinv(np.cov(x.T, bias=True))
    mu0 = x.mean(0)
    d = np.array([[(f - m) @ shared @ (f - m) for m in means] for f in feats])
    d0 = np.array([(f - mu0) @ background @ (f - mu0) for f in feats])
    assert np.allclose(build_score("maha").fit(ind)(feats), -d.min(1), rtol=1e-6, atol=1e-6)
    assert np.allclose(build_score("rmd").fit(ind)(feats), -(d - d0[:, None]).min(1), rtol=1e-6, atol=1e-6)


def _clip_like(rng: np.random.Generator, centres: np.ndarray, dim: int) -> np.ndarray:
    """Unit features sharing one large common direction (as CLIP's do), each near its class centre."""
    common = np.ones(dim) / np.sqrt(dim)
    return _unit_rows(2.0 * common + centres + 1.4 * rng.normal(size=centres.shape) / np.sqrt(dim))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("per_class", [20, 400])  # N − C < D and N ≫ D
def test_mahalanobis_matches_sklearn_empirical_covariance(per_class):
    """Shared covariance of class-centred features and its precision equal EmpiricalCovariance's, for any N."""
    from sklearn.covariance import EmpiricalCovariance

    rng, dim, classes = np.random.default_rng(1), 256, 5
    y = np.repeat(np.arange(classes), per_class)
    x = _clip_like(rng, np.eye(classes, dim)[y], dim)
    g = fit_class_gaussians(x, y, chunk=7)
    x64 = x.astype(np.float64)
    means = np.stack([x64[y == c].mean(0) for c in range(classes)])
    within = EmpiricalCovariance(assume_centered=True).fit(x64 - means[y])
    total = EmpiricalCovariance().fit(x64)
    scale = np.abs(within.precision_).max()
    assert np.allclose(g.precision, within.precision_, rtol=0, atol=1e-7 * scale)
    assert np.allclose(g.background_precision, total.precision_, rtol=0, atol=1e-7 * np.abs(total.precision_).max())
    queries = _clip_like(rng, np.eye(classes + 2, dim)[rng.integers(0, classes + 2, 30)], dim).astype(np.float64)
    reference = np.stack([within.mahalanobis(queries - m) for m in means], axis=1).min(1)
    ind = InDistribution(train_features=x, train_labels=y)
    assert np.allclose(-build_score("maha").fit(ind)(queries), reference, rtol=1e-6, atol=1e-6 * reference.max())


def test_mahalanobis_is_not_noise_with_fewer_images_than_dimensions():
    """300 CLIP-like features of dimension 512 (N − C < D). E[xxᵀ] − μμᵀ with numpy's pinv gave AUROC 0.55 here."""
    from sklearn.metrics import roc_auc_score

    rng, dim, classes = np.random.default_rng(0), 512, 10
    directions = _unit_rows(rng.normal(size=(classes + 5, dim)))
    y = np.repeat(np.arange(classes), 30)
    train = _clip_like(rng, directions[y], dim)
    ind_test = _clip_like(rng, directions[rng.integers(0, classes, 200)], dim)
    ood = _clip_like(rng, directions[classes + rng.integers(0, 5, 200)], dim)
    with pytest.warns(UserWarning, match="span at most 290 of 512 dimensions") as caught:
        ind = InDistribution(train_features=train, train_labels=y)
        scores = {name: build_score(name).fit(ind) for name in ("maha", "rmd")}
    assert len(caught) == 1  # one fit, shared by both scores: one warning
    truth = np.r_[np.ones(200), np.zeros(200)]
    for name, score in scores.items():
        assert roc_auc_score(truth, np.r_[score(ind_test), score(ood)]) > 0.98, name


def test_linear_probe_matches_sklearn(toy):
    ind, id_feats, _, test_labels, _ = toy
    probe = fit_linear_probe(ind.train_features, ind.train_labels, Cs=[0.5])
    reference = LogisticRegression(C=0.5, max_iter=10_000, tol=1e-10).fit(ind.train_features, ind.train_labels)
    assert np.abs(_softmax(probe.logits(id_feats)) - reference.predict_proba(id_feats)).max() < 2e-3
    assert probe.accuracy(id_feats, test_labels) == reference.score(id_feats, test_labels)


def test_linear_probe_picks_c_on_held_out_data():
    """C maximises held-out accuracy (ties: the smaller C); the final probe is refit on all of train."""
    import torch as t

    from utils.scores.logistic_regression import _split, train_logistic_regression

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=300)
    feats = (rng.normal(size=(300, 40)) + 0.4 * np.eye(40)[labels]).astype(np.float32)  # overlapping classes
    Cs = [1e-3, 1e-1, 10.0, 1e3]
    probe = fit_linear_probe(feats, labels, Cs=Cs, seed=0)
    fit_idx, val_idx = _split(labels, 0.2, 0)
    x, y = t.from_numpy(feats), t.from_numpy(labels)
    accuracies = []
    for c in Cs:
        w, b = train_logistic_regression([(x[fit_idx], y[fit_idx])], 3, c)
        accuracies.append(((x[val_idx] @ w.T + b).argmax(1) == y[val_idx]).float().mean().item())
    assert len(set(accuracies)) > 1  # the choice matters on this data
    assert probe.validation_accuracy == pytest.approx(max(accuracies), abs=1e-6)
    assert Cs[int(np.argmax(accuracies))] == probe.C
    full = LogisticRegression(C=probe.C, max_iter=10_000, tol=1e-10).fit(feats, labels)
    assert np.abs(_softmax(probe.logits(feats)) - full.predict_proba(feats)).max() < 5e-3


def test_probe_scores_share_one_fit(toy, monkeypatch):
    import utils.scores.linear_probe as lp

    ind = InDistribution(train_features=toy[0].train_features, train_labels=toy[0].train_labels)
    calls = []
    original = lp.fit_linear_probe
    monkeypatch.setattr(lp, "fit_linear_probe", lambda *a, **k: calls.append(1) or original(*a, **k))
    for name in ("lp_msp", "lp_energy", "lp_maxlogit"):
        build_score(name, Cs=[1.0]).fit(ind)
    assert len(calls) == 1


def test_names_and_errors(toy):
    assert resolve_scores(["MCM", "maxlogit", "mcm", "Mahalanobis"]) == ["mcm", "mis", "maha"]
    by_name = {"csp", "eoe", "negrefine", "adaneg"}
    assert resolve_scores(["all"]) == [name for name in SCORES if name not in by_name]
    assert resolve_scores(["all", "eoe"])[-1] == "eoe"
    assert needs_text("mcm") and needs_text("oracle") and not needs_text("knn") and not needs_text("lp_msp")
    with pytest.raises(ValueError, match=r"known: .*mcm"):
        build_score("nope")
    with pytest.raises(ValueError, match="temperature"):
        build_score("mcm", temperature=0)
    with pytest.raises(ValueError, match="k must be"):
        build_score("knn", k=0)


ROOT = Path(__file__).resolve().parent.parent
BANK_ROWS, BANK_DIM, BANK_QUERIES, BANK_BLOCK = 1_281_167, 512, 10_000, 65_536
# Derived, not measured: a float32 cosine of unit vectors in D dimensions is within 3·D·u of the exact one (D·u for
# the dot product, D·u for each vector's normalisation; u = 2^-24), and the k-th largest of perturbed values moves
# no more than the largest perturbation. Compared as similarities: distances sqrt(2 - 2s) magnify errors near s = 1.
SIMILARITY_TOLERANCE = 3 * BANK_DIM * float(np.finfo(np.float32).eps) / 2

# Runs in a fresh process so that its peak resident memory is the KNN's alone.
KNN_IN_A_PROCESS = """
import json, sys
import numpy as np
import torch  # the search imports it on first use: loaded before "before", so that only the search is measured
from utils.scores import InDistribution, build_score
bank = np.load(sys.argv[1], mmap_mode="r")
queries = np.load(sys.argv[2])
def status(field):  # this process's own memory (ru_maxrss would include the parent's, inherited through fork)
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
before = status("VmRSS")  # imports and queries loaded
sweep = build_score("knn", k=50).fit(InDistribution(train_features=bank)).sweep(queries, [1, 50])
print(json.dumps({"before": before, "peak": status("VmHWM"), "k1": sweep[1].tolist(), "k50": sweep[50].tolist()}))
"""


def _write_bank(path: Path) -> None:
    """Distinct unit rows, written block by block (column rolls of one random block keep generation cheap)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((BANK_BLOCK, BANK_DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    bank = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(BANK_ROWS, BANK_DIM))
    for i, start in enumerate(range(0, BANK_ROWS, BANK_BLOCK)):
        block = np.roll(base, 7 * i + 1, axis=1)[: BANK_ROWS - start]
        bank[start : start + len(block)] = block
    bank.flush()
    del bank


@pytest.mark.scale
def test_knn_on_an_imagenet_sized_bank_stays_in_bounded_memory(tmp_path):
    bank_path, queries_path = tmp_path / "bank.npy", tmp_path / "queries.npy"
    _write_bank(bank_path)
    rows = np.sort(np.random.default_rng(1).choice(BANK_ROWS, BANK_QUERIES, replace=False))
    np.save(queries_path, np.load(bank_path, mmap_mode="r")[rows].astype(np.float32))  # bank rows as test features
    done = subprocess.run([sys.executable, "-c", KNN_IN_A_PROCESS, str(bank_path), str(queries_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    bank_bytes, peak, grown = BANK_ROWS * BANK_DIM * 2, out["peak"], out["peak"] - out["before"]
    message = f"peak {peak / 2**30:.2f} GiB, {grown / 2**20:.0f} MiB searching; bank {bank_bytes / 2**30:.2f} GiB"
    assert peak < bank_bytes + 2**30, message  # the bound asked for
    assert grown <= _knn_working_set() + 2**28, message  # what streaming needs (+ allocator slack), never the bank
    k1, k50 = np.array(out["k1"]), np.array(out["k50"])
    assert (1 - _similarity(k1)).max() <= SIMILARITY_TOLERANCE  # every query is a bank row: its own neighbour
    assert (k50 < k1).all() and np.isfinite(k50).all()
    reference = _brute_force_k50(bank_path, rows[:20])
    assert np.abs(_similarity(k50[:20]) - reference).max() <= SIMILARITY_TOLERANCE


def _knn_working_set() -> int:
    """Bytes the streamed search holds at once, from its block sizes: one float16 bank block as read, its float32
    copy, one query block's similarities to it, and the queries (given and normalised) in float32."""
    import utils.scores.knn as knn

    block, queries = knn.BANK_CHUNK * BANK_DIM, BANK_QUERIES * BANK_DIM
    return block * 2 + block * 4 + knn.QUERY_CHUNK * knn.BANK_CHUNK * 4 + 2 * queries * 4


def _similarity(knn_scores: np.ndarray) -> np.ndarray:
    """The cosine behind a KNN score −‖z − z_(k)‖ = −sqrt(2 − 2 cos)."""
    return 1 - knn_scores**2 / 2


def _brute_force_k50(bank_path: Path, rows: np.ndarray) -> np.ndarray:
    """The 50th-largest cosine similarity of a few bank rows, by a plain float64 numpy scan of the whole bank."""
    bank = np.load(bank_path, mmap_mode="r")
    queries = bank[rows].astype(np.float64)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = []
    for start in range(0, BANK_ROWS, BANK_BLOCK):
        block = bank[start : start + BANK_BLOCK].astype(np.float64)
        sims.append(queries @ (block / np.linalg.norm(block, axis=1, keepdims=True)).T)
    return -np.sort(-np.concatenate(sims, axis=1), axis=1)[:, 49]


def test_mahalanobis_distances_in_torch_equal_numpys(toy):
    """The GPU path (float64 torch on the score's device), run on CPU tensors: the same distances as numpy."""
    from utils.scores.mahalanobis import distances_on, squared_distances

    ind, id_feats, ood_feats, _, _ = toy
    g = fit_class_gaussians(ind.train_features, ind.train_labels)
    x = np.r_[id_feats, ood_feats].astype(np.float64)
    store = {}
    got = distances_on(store, "classes", x, g.means, g.precision, torch.device("cpu"))
    assert np.allclose(got, squared_distances(x, g.means, g.precision), rtol=1e-12, atol=1e-12)
    assert "classes" in store  # moved to the device once, reused by the next call
    assert build_score("maha", device="cpu").fit(ind).device.type == "cpu"


def test_local_scores_are_glmcms_formulas():
    """AtsuMiyai/GL-MCM utils/detection_util.py restated: softmax over classes of cos / T per token; L-MCM the max
    over patches and classes; GL-MCM = MCM (global token) + λ · L-MCM."""
    rng = np.random.default_rng(12)
    text = _unit(rng.normal(size=(5, DIM)))
    rows = _unit(rng.normal(size=(7 * 10, DIM))).reshape(7, 10, DIM)  # 7 images: global + 9 patches
    flat = rows.reshape(7, -1)
    ind = InDistribution(text_features=text)
    for temperature, lam in [(1.0, 1.0), (0.5, 0.5)]:
        local = build_score("l_mcm", temperature=temperature).fit(ind)(flat)
        both = build_score("gl_mcm", temperature=temperature, gl_lambda=lam).fit(ind)(flat)
        for i in range(7):
            exps = [np.exp(rows[i, t] @ text.T / temperature) for t in range(10)]
            per_token = [max(e / e.sum()) for e in exps]
            assert MCM.plain(local[i]) == pytest.approx(max(per_token[1:]), rel=1e-6)
            assert both[i] == pytest.approx(per_token[0] + lam * max(per_token[1:]), rel=1e-6)
    with pytest.raises(ValueError, match="not tokens of dimension"):
        build_score("l_mcm").fit(ind)(flat[:, :-1])


def test_one_class_softmax_scores_refuse_and_energy_runs():
    """A softmax over one class is 1 whatever the image: MCM, entropy and var say so; energy (T · logsumexp, here
    the similarity itself) is a score still."""
    text = np.eye(1, DIM, dtype=np.float32)
    feats = _unit(np.random.default_rng(2).normal(size=(5, DIM)))
    ind = InDistribution(text_features=text)
    assert np.allclose(build_score("energy").fit(ind)(feats), feats[:, 0], atol=1e-6)
    for name in ("mcm", "entropy", "var", "l_mcm", "gl_mcm"):
        with pytest.raises(ValueError, match="1 for one class"):
            build_score(name).fit(ind)


# Scores that L2-normalise the features they are given (as their papers and pytorch-ood do): scaling an image's
# feature must not move them, a test that unit-vector toy features alone cannot make.
NORMALISING = ("knn", "pood:knn", "pood:mcm")


@pytest.mark.parametrize("name", NORMALISING)
def test_scores_that_normalise_ignore_the_features_scale(name, toy):
    ind, id_feats, ood_feats, _, extras = toy
    score = _build(name, extras).fit(ind)
    for feats in (id_feats, ood_feats):
        assert np.allclose(score(3.0 * feats), score(feats), rtol=1e-5, atol=1e-6)
        assert np.allclose(score(0.2 * feats), score(feats), rtol=1e-5, atol=1e-6)

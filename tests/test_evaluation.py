"""Evaluation: metrics against scikit-learn, the notebook's analyses, and the pipeline's stages and input resolvers."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from tests.conftest import write_images
from utils.errors import UserError
from utils.evaluation.analysis import confidence_without_true_class, disagreements, rank_fraction
from utils.evaluation.metrics import (
    METRICS,
    aupr_trapezoid,
    bootstrap_intervals,
    fpr_at_closest_recall,
    fpr_at_tpr,
    ood_metrics,
)  # fmt: skip
from utils.features import text
from utils.scores.base import l2_normalise as _unit
from utils.scores.label_mass import id_probability


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


def _mcm_fpr_at_recall(id_scores: np.ndarray, ood_scores: np.ndarray, level: float = 0.95) -> float:
    """MCM's fpr_and_fdr_at_recall (utils/detection_util.py, via get_measures(ID, OOD)) restated: over the distinct
    thresholds, from the lowest that first reaches full ID recall up to the highest, then a last (recall 1, FPR 0)
    point, take the first whose ID recall is closest to `level`; accept score >= threshold."""
    thresholds = np.unique(np.r_[id_scores, ood_scores])[::-1]  # highest first
    recall = np.array([(id_scores >= t).mean() for t in thresholds])
    false = np.array([(ood_scores >= t).sum() for t in thresholds])
    last = int(np.argmax(recall == recall[-1]))  # the first threshold with the final recall
    recall, false = np.r_[recall[last::-1], 1.0], np.r_[false[last::-1], 0]
    return false[np.argmin(np.abs(recall - level))] / len(ood_scores)


@pytest.mark.parametrize("seed", range(4))
def test_mcm_rule_is_mcms_fpr_and_fdr_at_recall(seed):
    rng = np.random.default_rng(seed)
    n_id = int(rng.integers(15, 400))
    id_scores, ood_scores = np.round(rng.normal(1, 1, n_id), 1), np.round(rng.normal(0, 1, 300), 1)  # with ties
    assert fpr_at_closest_recall(id_scores, ood_scores) == _mcm_fpr_at_recall(id_scores, ood_scores)


@pytest.mark.parametrize(("n_id", "seed"), [(20, 0), (100, 1), (200, 2), (1000, 3), (260, 4)])
def test_fpr95_against_mcms_when_095_n_is_an_integer(n_id, seed):
    """Equal unless OOD images score between the 0.95·n-th and the next ID image: MCM's counts them, ours does not."""
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, 333)
    ours, theirs = fpr_at_tpr(id_scores, ood_scores), _mcm_fpr_at_recall(id_scores, ood_scores)
    ranked = np.sort(id_scores)[::-1]
    k = round(0.95 * n_id)
    between = ((ood_scores < ranked[k - 1]) & (ood_scores > ranked[k])).sum()
    assert theirs == pytest.approx(ours + between / len(ood_scores), abs=1e-15)
    gap_free = ood_scores[(ood_scores >= ranked[k - 1]) | (ood_scores <= ranked[k])]
    assert fpr_at_tpr(id_scores, gap_free) == pytest.approx(_mcm_fpr_at_recall(id_scores, gap_free), abs=1e-15)


def test_fpr95_never_accepts_fewer_than_95_percent_of_id_where_mcms_may():
    """30 ID images: 28/30 (0.933) is closer to 0.95 than 29/30 (0.967), so MCM's rule stops below 0.95; ours
    takes the first recall >= 0.95. OOD images tie with the 29th ID image (score 2)."""
    id_scores = np.arange(30, 0, -1, dtype=float)  # 30 (best) ... 1
    ood_scores = np.array([2.5, 2.0, 2.0, 0.1])
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(3 / 4)  # threshold 2 (recall 29/30): 2.5, 2, 2
    assert fpr_at_closest_recall(id_scores, ood_scores) == pytest.approx(1 / 4)  # threshold 2.5 (recall 28/30)
    assert _mcm_fpr_at_recall(id_scores, ood_scores) == pytest.approx(1 / 4)


@pytest.mark.parametrize("seed", range(3))
def test_openood_aupr_is_sklearns_trapezoid(seed):
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(seed)
    id_scores, ood_scores = np.round(rng.normal(1, 1, 250), 1), np.round(rng.normal(0, 1, 180), 1)
    y, s = np.r_[np.ones(250), np.zeros(180)], np.r_[id_scores, ood_scores]
    precision, recall, _ = precision_recall_curve(y, s)
    assert aupr_trapezoid(id_scores, ood_scores) == pytest.approx(auc(recall, precision), abs=1e-12)
    precision, recall, _ = precision_recall_curve(1 - y, -s)
    extra = ood_metrics(id_scores, ood_scores, extra=["AUPR_OUT_OPENOOD"])["AUPR_OUT_OPENOOD"]
    assert extra == pytest.approx(auc(recall, precision), abs=1e-12)
    assert aupr_trapezoid(id_scores, ood_scores) != pytest.approx(average_precision_score(y, s), abs=1e-4)


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
    intervals = bootstrap_intervals(id_scores, ood_scores, rounds=1000, seed=1)
    assert set(intervals) == set(METRICS)
    for metric, (low, high) in intervals.items():
        assert low <= point[metric] <= high and high - low < 0.2
    assert intervals == bootstrap_intervals(id_scores, ood_scores, rounds=1000, seed=1)  # seeded
    assert bootstrap_intervals(np.ones(5) * 2, np.zeros(5), rounds=1000)["AUROC"] == (1.0, 1.0)
    with pytest.raises(ValueError, match="needs at least 1000 rounds, got 1"):  # 1 round: a one-point "interval"
        bootstrap_intervals(id_scores, ood_scores, rounds=1)


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


# The pipeline's stages and the score-input resolvers, on the tiny model and small digits sets.
@pytest.fixture
def experiment(tiny, tmp_path):
    from utils.data.splits import DataOptions
    from utils.evaluation.inputs import Experiment
    from utils.evaluation.options import EvalOptions
    from utils.features.store import FeatureCache

    data = DataOptions(limit=40)
    exp = Experiment(EvalOptions(workers=0, templates=("a photo of a {}.",), settings={"k": [1, 3]}), "tiny",
                     cache=FeatureCache(tmp_path / "cache"))  # fmt: skip
    exp.id_test, exp.id_train = data.load("digits", "test"), data.load("digits", "train")
    write_images(tmp_path / "noise", 12, seed=3)  # a flat folder: an OOD set without class names
    exp.ood_sets = [
        data.load("digits_ood", "test"),
        data.load("faces", "test"),
        data.load(f"folder:{tmp_path / 'noise'}", "test"),
    ]
    exp.bundle = tiny
    return exp


def test_plan_skips_under_all_and_refuses_when_named(experiment, capsys):
    from utils.errors import UserError
    from utils.evaluation.pipeline import plan
    from utils.scores import SCORES

    planned = plan(["all"], experiment)
    checkpoints = {"kplus1", "group", "negprompt", "idlike"}  # their inputs come from a --ckpt only
    assert not checkpoints & set(planned)
    by_name = {"csp", "eoe", "negrefine", "adaneg"}  # only when named
    assert set(planned) == set(SCORES) - {*checkpoints, *by_name}
    printed = capsys.readouterr().err
    assert "skipping kplus1: needs ood_prompt_features" in printed
    assert "--score all leaves out csp, eoe, negrefine, adaneg (name them to run them): csp: its pool" in printed
    with pytest.raises(UserError, match=r"finetune_clip\.py --method kplus1"):
        plan(["mcm", "kplus1"], experiment)
    experiment.model_name = "RN50"  # a CLIP without patch tokens: everything but the local view
    assert set(plan(["all"], experiment)) == set(SCORES) - {*checkpoints, *by_name, "l_mcm", "gl_mcm"}
    assert "skipping l_mcm, gl_mcm: needs patch tokens of an open_clip ViT" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"gl_mcm needs patch tokens of an open_clip ViT \(the local view\); RN50"):
        plan(["gl_mcm"], experiment)
    experiment.model_name = "timm:test_vit"
    assert plan(["all"], experiment) == ["knn", "maha", "rmd", "lp_msp", "lp_energy", "lp_maxlogit", "pood:mahalanobis",
                                         "pood:rmd", "pood:gmm", "pood:knn"]  # fmt: skip
    with pytest.raises(UserError, match="needs a text encoder"):
        plan(["MCM"], experiment)


def test_a_misspelt_setting_is_an_error(experiment):
    from utils.errors import UserError
    from utils.evaluation.pipeline import plan

    experiment.options.settings["temprature"] = 0.01
    with pytest.raises(UserError, match="unknown settings temprature; known: temperature"):
        plan(["mcm"], experiment)


def test_every_input_has_a_resolver_or_a_method_that_provides_it():
    """A run supplies each input (a resolver or a declared setting); the rest come from the checkpoint of the method
    the score names (`supplied_by`), whose objective provides exactly them."""
    from utils.evaluation.inputs import RESOLVERS, requirements, score_settings
    from utils.scores import SCORES
    from utils.training.methods import METHODS

    for score, cls in SCORES.items():
        own = set(requirements(score)) - {*RESOLVERS, *score_settings()}
        assert own == (set(METHODS[cls.supplied_by].provides) if cls.supplied_by else set()), score


def test_stages_sweeps_and_per_set_inputs(experiment):
    from utils.evaluation import pipeline
    from utils.scores import InDistribution, build_score

    scores = ["mcm", "knn", "oracle", "lp_msp"]
    encoded = pipeline.encode(experiment, scores)
    result = pipeline.measure(pipeline.score(experiment, encoded, scores))
    assert set(result.scores) == {"mcm", "knn@1", "knn@3", "oracle", "lp_msp"}
    noise = experiment.ood_sets[2].name
    assert set(result.scores["oracle"]) == {"digits_ood", "faces"}  # the noise folder has no class names
    assert set(result.scores["mcm"]) == {"digits_ood", "faces", noise}
    assert any(note.startswith(f"oracle: skipped {noise}") for note in result.notes)
    knn3 = build_score("knn", k=3).fit(InDistribution(train_features=encoded.id_train.features))
    id_scores, ood_scores = result.scores["knn@3"]["faces"]
    assert np.allclose(id_scores, knn3(encoded.id_test["global"].features))  # one sweep = separate runs
    assert np.allclose(ood_scores, knn3(encoded.ood["faces"]["global"].features))
    assert set(result.accuracy) == {"zero_shot_top1", "linear_probe_top1", "linear_probe_C"}
    assert result.metrics["mcm"]["faces"] == ood_metrics(*result.scores["mcm"]["faces"])
    again = pipeline.evaluate(experiment, scores)  # the stages, joined
    assert again.metrics == result.metrics


def test_a_new_score_with_a_new_input_touches_its_class_the_registry_and_one_resolver(experiment, monkeypatch):
    """The extension path the layout promises, exercised with a throwaway score (not committed to the registry)."""
    from utils.evaluation import inputs, pipeline
    from utils.scores import SCORES, Score

    class ScaledMaxSimilarity(Score):
        """max_k s_k times a run-supplied factor (a stand-in for a score with its own input)."""

        needs = ("text_features",)
        inputs = ("factor",)

        def __init__(self, factor: float = 1.0):
            super().__init__()
            self.factor = factor

        def _fit(self, ind):
            self.text = ind.text_features

        def _score(self, features):
            return self.factor * (features @ self.text.T).max(axis=1)

    monkeypatch.setitem(SCORES, "scaled", ScaledMaxSimilarity)  # the registry
    monkeypatch.setitem(inputs.RESOLVERS, "factor", inputs.Resolver(lambda exp, enc: 2.0))  # one resolver
    result = pipeline.evaluate(experiment, pipeline.plan(["scaled", "mis"], experiment))
    assert np.allclose(result.scores["scaled"]["faces"][0], 2.0 * result.scores["mis"]["faces"][0])


def test_a_new_method_with_its_own_score_needs_no_resolver(experiment, monkeypatch):
    """A method's checkpoint supplies its score's inputs through the contract: no evaluation code changes."""
    from utils.evaluation import inputs, pipeline
    from utils.models.checkpoint import ScoreContract
    from utils.scores import SCORES, Score
    from utils.training.methods import METHODS
    from utils.training.objectives import Objective

    class PrototypeObjective(Objective):
        provides = ("prototype_features",)

    class PrototypeSimilarity(Score):
        needs = ()
        inputs = ("prototype_features",)
        supplied_by = "prototypes"

        def __init__(self, prototype_features=None):
            super().__init__()
            self.prototypes = prototype_features

        def _score(self, features):
            return (features @ self.prototypes.T).max(axis=1)

    monkeypatch.setitem(METHODS, "prototypes", PrototypeObjective)
    monkeypatch.setitem(SCORES, "prototype", PrototypeSimilarity)
    with pytest.raises(UserError, match=r"finetune_clip\.py --method prototypes"):
        pipeline.plan(["prototype"], experiment)
    experiment.contract = ScoreContract("prototypes", tuple(experiment.id_test.classnames), 50.0,
                                        texts={"prototype_features": ("a photo of a digit.",)})  # fmt: skip
    assert inputs.enabled_by(experiment.contract) == ["prototype"]
    result = pipeline.evaluate(experiment, pipeline.plan(["prototype"], experiment))
    prototype = text.text_embeddings(experiment.bundle, ["a photo of a digit."])
    expected = (np.asarray(pipeline.encode(experiment, ["prototype"]).id_test["global"].features, np.float32)
                @ prototype.T).max(axis=1)  # fmt: skip
    assert np.allclose(result.scores["prototype"]["faces"][0], expected, atol=1e-6)


def test_group_checkpoint_names_its_classes(experiment):
    """Groups travel by class name: any order of the ID classes works, a class the ID set lacks is an error."""
    from utils.evaluation import pipeline
    from utils.models.checkpoint import ScoreContract

    names = list(experiment.id_test.classnames)
    contract = ScoreContract("group", tuple(reversed(names)), 100.0, texts={"others_features": ("x", "y")},
                             values={"groups": [names[3:], names[:3]]})  # fmt: skip
    experiment.contract = contract
    result = pipeline.evaluate(experiment, pipeline.plan(["group"], experiment))
    assert set(result.scores["group"]) == {d.name for d in experiment.ood_sets}
    experiment.contract = ScoreContract("group", ("a", "b"), 100.0, texts={"others_features": ("x", "y")},
                                        values={"groups": [["a"], ["b"]]})  # fmt: skip
    with pytest.raises(UserError, match=r"score group: the groups name classes \['a', 'b'\]"):
        pipeline.evaluate(experiment, ["group"])


def test_checkpoint_scored_with_other_templates_gets_a_note(experiment):
    from utils.evaluation import pipeline
    from utils.models.checkpoint import ScoreContract

    contract = ScoreContract("kplus1", tuple(experiment.id_test.classnames), 100.0,
                             texts={"ood_prompt_features": ("a photo of an unknown object.",)},
                             class_templates=("a photo of a {}.",))  # fmt: skip
    experiment.contract = contract
    result = pipeline.evaluate(experiment, ["kplus1"])
    assert not any("trained with" in note for note in result.notes)
    experiment.options.templates = ("a sketch of a {}.",)
    result = pipeline.evaluate(experiment, ["kplus1"])
    assert [n for n in result.notes if "trained with" in n] == [
        "kplus1: the checkpoint's class prompts were trained with 'a photo of a {}.', scored here with "
        "'a sketch of a {}.': pass the training templates with --templates to score as trained"
    ]


def test_label_mass_logit_scale_is_the_models_own_for_siglip(experiment):
    """OpenAI CLIP: 100; a model with a logit bias (SigLIP): its exp(logit_scale); a checkpoint: its learned one."""
    from types import SimpleNamespace

    import torch

    from utils.evaluation.inputs import RESOLVERS
    from utils.models.checkpoint import ScoreContract

    resolve = RESOLVERS["logit_scale"].resolve
    assert resolve(experiment, None) == 100.0
    siglip = SimpleNamespace(logit_scale=torch.tensor(np.log(10.0)), logit_bias=torch.tensor(-10.0))
    experiment.bundle = SimpleNamespace(model=siglip)
    assert resolve(experiment, None) == pytest.approx(10.0)
    experiment.contract = ScoreContract("contrastive", ("a",), 42.0)
    assert resolve(experiment, None) == 42.0


def test_preset_conflicts_are_compared_as_meant():
    """Scores case-insensitively and through aliases, lists of sets in any order; defaults yield to the user."""
    from utils.evaluation.presets import Preset, apply_preset, comparable

    preset = Preset("p", "paper", settings={"score": ["mis"], "out": ["a", "b"]}, defaults={"model": "ViT-B-16"})
    values = {"score": ["MaxLogit"], "out": ["b", "a"], "model": "tiny", "ckpt": None, "limit": None}
    applied = apply_preset(preset, values, {"score", "out", "model"}, {"score": "--score"})
    assert applied["score"] == ["mis"] and applied["model"] == "tiny"
    with pytest.raises(UserError, match="sets --score mis; it conflicts with --score knn given here"):
        apply_preset(preset, {**values, "score": ["knn"]}, {"score"}, {"score": "--score"})
    assert comparable(preset, {**values, "model": "ViT-B-16"}) is None
    assert comparable(preset, {**values, "model": "ViT-B-16", "limit": 10}) == "a subset of the data (--limit)"
    assert comparable(preset, values) == "model tiny (published: ViT-B-16)"
    transformed = {**values, "model": "ViT-B-16", "transform": "setar"}  # a transform the paper did not use
    assert comparable(preset, transformed) == "a model transform the paper did not use (--transform)"
    assert comparable(replace(preset, settings={**preset.settings, "transform": "setar"}), transformed) is None


def test_ood_split_must_name_an_ood_set(tmp_path):
    from utils.data.benchmark import BenchmarkRequest, load_ood_sets
    from utils.data.splits import DataOptions

    with pytest.raises(UserError, match=r"--ood-split names faces, which is not among the OOD sets \(digits_ood\)"):
        load_ood_sets(BenchmarkRequest("digits", ["digits_ood"], ood_splits={"faces": "train"}), DataOptions())


def _released_csp(bundle, classnames, nouns, labels, fraction=0.15, quantile=0.95):
    """MengyuanChen21/NeurIPS2024-CSP 3a7bdab multi_modal.py restated in torch: ID labels and nouns the mean of the
    raw embeddings of 8 prompts, conjugated labels of 4, then normalised; each part ranked by torch.quantile of its
    similarities to the ID labels, a candidate above 0.95 cosine to one of them ranked 1.0; int(15%) of each kept,
    nouns first."""
    noun_templates = ["a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
                      "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}"]  # fmt: skip
    adj_templates = ["{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}"]

    def encode(prompts):
        with torch.no_grad():
            return bundle.model.encode_text(bundle.tokenizer(prompts)).float()

    id_prompts = [t.format(c) for t, c in itertools.product(noun_templates, classnames)]  # template-major, as released
    positive = encode(id_prompts).view(-1, len(classnames), bundle.embed_dim).mean(dim=0)
    positive /= positive.norm(dim=-1, keepdim=True)
    picked = []
    for words, templates in ((nouns, noun_templates), (labels, adj_templates)):
        prompts = [t.format(w) for w in words for t in templates]  # word-major, as released
        negative = encode(prompts).view(-1, len(templates), bundle.embed_dim).mean(dim=1)
        negative /= negative.norm(dim=-1, keepdim=True)
        similarity = negative @ positive.T
        rank = torch.quantile(similarity, q=quantile, dim=-1)
        rank[torch.max(similarity, dim=1)[0] > 0.95] = 1.0
        picked.append(negative[torch.argsort(rank)[: int(len(words) * fraction)]])
    return positive.numpy(), torch.cat(picked).numpy()


def test_csp_mining_is_the_releases(experiment, tmp_path):
    """The csp_labels resolver against the release restated: the same ID prompts and negatives, in the same order; a
    noun that is an ID label (cosine 1 to it) is never kept, and the mined list is saved."""
    from utils.evaluation import inputs
    from utils.scores import build_score

    nouns = [f"thing{i}" for i in range(34)] + list(experiment.id_test.classnames[:2])
    labels = [f"word{i} {superclass}" for i, superclass in enumerate(["area", "vista", "creature", "scene"] * 5)]
    pool = tmp_path / "csp.tsv"
    pool.write_text("\n".join([*nouns, *(f"{label}\tadj" for label in labels)]) + "\n")
    experiment.options.settings.update(csp_words=str(pool), neg_fraction=0.15, neg_percentile=95.0)
    got = inputs.RESOLVERS["csp_labels"].resolve(experiment, None)
    positive, negatives = _released_csp(experiment.bundle, list(experiment.id_test.classnames), nouns, labels)
    assert np.allclose(got.id_features, positive, atol=1e-5)
    assert got.negatives.shape == negatives.shape == (int(0.15 * 36) + int(0.15 * 20), experiment.bundle.embed_dim)
    assert np.allclose(got.negatives, negatives, atol=2**-10)  # the candidates' cache stores float16
    saved = [line.split("\t") for line in experiment.artifacts["csp_words"]]
    assert [pos for _, pos in saved] == ["noun"] * 5 + ["adj"] * 3
    assert not {w for w, _ in saved} & set(experiment.id_test.classnames)
    rng = np.random.default_rng(0)  # images halfway between an ID label and a negative: unsaturated masses
    feats = _unit(positive[rng.integers(0, len(positive), 30)] + negatives[rng.integers(0, len(negatives), 30)]
                  + 0.02 * rng.normal(size=(30, experiment.bundle.embed_dim)))  # fmt: skip
    one_group = build_score("csp", csp_labels=got, neg_groups=1).fit(None)(feats)
    joint = torch.softmax(torch.from_numpy(100.0 * feats @ np.r_[positive, negatives].T), dim=1).numpy()
    released = joint[:, : len(positive)].sum(1)  # CSP's ngroup <= 1 branch: the softmax's ID mass
    assert ((released > 0.01) & (released < 0.99)).sum() >= 5  # rows where the probabilities say something
    assert np.allclose(id_probability(one_group), released, atol=1e-3)


def _released_negrefine(bundle, classnames, nouns, adjectives, image_features, groups, seed, scale=100.0):
    """ah-ansari/NegRefine 72e4b82 src/clip_ood.py restated, one image at a time as its eval.py scores: NegLabel's
    grouped ID mass over the list (our seeded permutation of the groups) + 2 · the multi-matching score, whose 25
    "p and n" texts are embedded per image with the 8 noun templates (raw mean, then normalised). `scale`: the
    release's 100, or another to reach values that do not saturate with the tiny model."""
    noun_templates = ["a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
                      "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}"]  # fmt: skip
    adj_templates = ["{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}"]

    def embed(labels, templates):
        prompts = [t.format(c) for t, c in itertools.product(templates, labels)]
        with torch.no_grad():
            raw = bundle.model.encode_text(bundle.tokenizer(prompts)).float()
        mean = raw.view(len(templates), len(labels), -1).mean(dim=0)
        return mean / mean.norm(dim=-1, keepdim=True)

    positive = embed(classnames, noun_templates)
    negative = torch.cat([embed(nouns, noun_templates), embed(adjectives, adj_templates)])
    labels = [*nouns, *adjectives]
    kept = len(negative) - len(negative) % groups
    shuffled = negative[:kept][np.random.default_rng(seed).permutation(kept)]
    scores = []
    for x in torch.from_numpy(image_features).float()[:, None, :]:
        pos_sim, neg_sim = scale * x @ positive.T, scale * x @ negative.T
        masses = [torch.cat([pos_sim, scale * x @ g.T], dim=-1).softmax(dim=-1)[:, : len(classnames)].sum(dim=-1)
                  for g in shuffled.reshape(groups, -1, shuffled.shape[1])]  # fmt: skip
        neg_label_score = torch.stack(masses).mean()
        _, top_pos = torch.topk(pos_sim, min(5, len(classnames)))
        vals, top_neg = torch.topk(neg_sim, 5)
        texts = [f"{classnames[p]} and {labels[n]}" for p in top_pos[0].tolist() for n in top_neg[0].tolist()]
        neg_sims = torch.tensor([vals[0, i] for _ in range(len(top_pos[0])) for i in range(5)])
        sim = scale * x @ embed(texts, noun_templates).T
        multi_matching = torch.max(torch.exp(sim) / (torch.exp(sim) + torch.exp(neg_sims)))
        scores.append(neg_label_score.item() + 2 * multi_matching.item())
    return np.array(scores)


def test_negrefine_is_the_releases_score_one_image_at_a_time(experiment, tmp_path):
    """The negrefine_labels resolver and score against the release restated: the same scores on the ID test images
    and an OOD set; the pair table holds exactly the pairs those images read."""
    from utils.evaluation import inputs, pipeline
    from utils.features.store import FeatureCache
    from utils.scores import build_score

    nouns, adjectives = [f"thing{i}" for i in range(24)], [f"odd{i} vista" for i in range(8)]
    words = tmp_path / "refined.tsv"
    words.write_text("\n".join([*nouns, *(f"{a}\tadj" for a in adjectives)]) + "\n")
    experiment.cache = FeatureCache(tmp_path / "cache32", "float32")  # the pair prompts' embeddings as computed
    experiment.options.settings.update(negrefine_words=str(words), negrefine_top_k=5)
    experiment.ood_sets = experiment.ood_sets[:1]
    encoded = pipeline.encode(experiment, ["negrefine"])
    labels = inputs.RESOLVERS["negrefine_labels"].resolve(experiment, encoded)
    names = list(experiment.id_test.classnames)
    for scale in (100.0, 2.0):  # the release's, and one where the tiny model's multi-matching does not saturate
        score = build_score("negrefine", negrefine_labels=labels, neg_groups=4, seed=3, logit_scale=scale).fit(None)
        for features in (encoded.id_test["global"].features, encoded.ood["digits_ood"]["global"].features):
            features = np.array(features)
            expected = _released_negrefine(experiment.bundle, names, nouns, adjectives, features, 4, 3, scale)
            assert np.allclose(score(features), expected, rtol=0, atol=1e-4)
            if scale == 2.0:  # both terms vary: the comparison sees each of them
                assert (
                    np.ptp(score.multi_matching(features)) > 1e-3
                    and np.ptp(score(features) - 2 * score.multi_matching(features)) > 1e-3
                )
    assert 25 <= len(labels.pairs) <= 25 * (len(encoded.id_test["global"].index) + 40)
    assert experiment.artifacts["negrefine_words"][:1] == ["thing0\tnoun"]


def test_adaneg_mining_is_the_releases(experiment, tmp_path):
    """AdaNeg's negatives (OpenOOD-VLM 694592a clip_fixed_ood_prompt.py) restated: ID names left out, "The nice {}."
    and "This is a {} photo.", the count shared as int(N · n_adj / n) adjectives, ranked by the int(C · 0.95)-th
    smallest cosine to the ID prompts, adjectives first."""
    from utils.evaluation import inputs

    names = list(experiment.id_test.classnames)
    nouns, adjectives = [f"thing{i}" for i in range(20)] + names[:2], [f"odd{i}" for i in range(10)]
    pool = tmp_path / "pool.tsv"
    pool.write_text("\n".join([*nouns, *(f"{a}\tadj" for a in adjectives)]) + "\n")
    experiment.options.settings.update(neg_words=str(pool), neg_percentile=95.0, adaneg_negatives=8)
    got = inputs.RESOLVERS["adaneg_labels"].resolve(experiment, None)

    def encode(prompts):
        with torch.no_grad():
            raw = experiment.bundle.model.encode_text(experiment.bundle.tokenizer(prompts)).float()
        return raw / raw.norm(dim=-1, keepdim=True)

    positive = encode([f"The nice {c}." for c in names])
    candidates = {"adj": adjectives, "noun": nouns[:20]}  # the ID names left out
    counts = {"adj": int(8 * 10 / 30), "noun": 8 - int(8 * 10 / 30)}  # 2 (not round()'s 3) and 6
    picked = []
    for pos, template in (("adj", "This is a {} photo."), ("noun", "The nice {}.")):
        negative = encode([template.format(w) for w in candidates[pos]])
        selected = (negative @ positive.T).sort(1)[0][:, int(len(names) * 0.95)]
        picked.append(negative[torch.argsort(selected)[: counts[pos]]])
    assert np.allclose(got.id_features, positive.numpy(), atol=1e-6)
    assert np.allclose(got.negatives, torch.cat(picked).numpy(), atol=2**-10)  # the word cache stores float16
    saved = [line.split("\t") for line in experiment.artifacts["adaneg_words"]]
    assert [pos for _, pos in saved] == ["adj"] * 2 + ["noun"] * 6 and not {w for w, _ in saved} & set(names)


def test_eoe_names_go_through_the_runs_templates(experiment, tmp_path):
    """EOE renders the envisioned names with the templates that render the ID names (the release: both "a photo of
    a {c}"), cleaned as released."""
    from utils.evaluation import inputs

    names = tmp_path / "names.txt"
    names.write_text("# an LLM's answer\nRiver\nring\nDigit One\nriver\n")
    experiment.options.settings["eoe_names"] = str(names)
    got = inputs.RESOLVERS["envisioned_features"].resolve(experiment, None)
    assert np.allclose(got, text.text_embeddings(experiment.bundle, ["river", "ring"], experiment.options.templates))
    assert experiment.artifacts["eoe_words"] == ["river", "ring"]


def test_neglabel_mines_each_part_of_speech_with_the_released_prompts(experiment, tmp_path, monkeypatch):
    """ID labels and nouns "the nice {}", adjectives "This is a {} photo"; 15 % of each kept, nouns first."""
    from utils.evaluation import inputs

    nouns = [f"noun{i}" for i in range(20)]
    adjectives = [f"adjective{i}" for i in range(14)]
    words = tmp_path / "pool.txt"
    words.write_text("\n".join([*nouns, *(f"{a}\tadj" for a in adjectives)]) + "\n")
    experiment.options.settings["neg_words"] = str(words)
    calls, real = [], text.text_embeddings
    monkeypatch.setattr(
        text,
        "text_embeddings",
        lambda b, names, t, *a, **k: calls.append((list(names), t)) or real(b, names, t, *a, **k),
    )
    labels = inputs.RESOLVERS["negative_labels"].resolve(experiment, None)
    assert calls == [(list(experiment.id_test.classnames), ("the nice {}",)), (nouns, ("the nice {}",)),
                     (adjectives, ("This is a {} photo",))]  # fmt: skip
    picked = [line.split("\t") for line in experiment.artifacts["neglabel_words"]]
    assert [pos for _, pos in picked] == ["noun"] * 3 + ["adj"] * 2  # int(0.15 · 20), int(0.15 · 14)
    expected = np.concatenate(
        [
            real(experiment.bundle, [w for w, p in picked if p == "noun"], ("the nice {}",)),
            real(experiment.bundle, [w for w, p in picked if p == "adj"], ("This is a {} photo",)),
        ]
    )
    assert np.allclose(labels.negatives, expected, atol=2**-10)  # the word cache stores float16
    assert np.allclose(labels.id_features, real(experiment.bundle, experiment.id_test.classnames, ("the nice {}",)))

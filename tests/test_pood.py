"""pytorch-ood's detectors as scores: each equals minus pytorch-ood's own outlier score, called directly on the same
arrays; the detectors that cannot run on cached features say why; names; one run end to end."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_ood.detector as pood
import torch
from pytorch_ood.api import Detector

import eval_ood_detection
from tests.test_eval_ood_detection import run
from utils.evaluation.inputs import Experiment
from utils.evaluation.options import EvalOptions
from utils.evaluation.pipeline import plan
from utils.scores import SCORES, InDistribution, build_score, canonical
from utils.scores.pood import DETECTORS, POOD_SCORES, PROBE, UNAVAILABLE, Head, vim_dim

DIM, CLASSES, TRAIN, TEST = 16, 5, 200, 50


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Five classes around random means, a linear head aligned with them (every class has correctly classified train
    features, as SHE needs), test rows half near the means and half anywhere."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(CLASSES, DIM))
    labels = np.repeat(np.arange(CLASSES), TRAIN // CLASSES)
    train = _unit(means[labels] + 0.8 * rng.normal(size=(TRAIN, DIM)))
    near = means[rng.integers(0, CLASSES, TEST // 2)] + 0.8 * rng.normal(size=(TEST // 2, DIM))
    test = _unit(np.concatenate([near, rng.normal(size=(TEST - TEST // 2, DIM))]))
    weight, bias = 3 * _unit(means).astype(np.float64) + 0.3 * rng.normal(size=(CLASSES, DIM)), rng.normal(size=CLASSES)
    predicted = (train @ weight.T + bias).argmax(1)
    assert set(labels[predicted == labels].tolist()) == set(range(CLASSES))
    text = _unit(means)
    ind = InDistribution(text_features=text, train_features=train, train_labels=labels)
    return SimpleNamespace(ind=ind, test=test, head=Head(weight, bias), weight=weight, bias=bias, text=text)


def _linear(d) -> torch.nn.Linear:
    linear = torch.nn.Linear(DIM, CLASSES)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(d.weight))
        linear.bias.copy_(torch.from_numpy(d.bias))
    return linear


def _logits(d, x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).double() @ torch.from_numpy(d.weight).T + torch.from_numpy(d.bias)


# pytorch-ood called directly: each detector built, fitted on the ID train rows and scored on the test rows, with the
# arguments utils/scores/pood.py documents. Returns outlier scores (higher = more OOD).
def _features(detector, d, fit: bool = True, labels: bool = True):
    x, y = torch.from_numpy(d.ind.train_features), torch.from_numpy(d.ind.train_labels)
    if fit:
        detector.fit_features(x, y) if labels else detector.fit_features(x)
    return detector.predict_features(torch.from_numpy(d.test))


def _on_logits(detector, d, fit: bool = False):
    if fit:
        detector.fit_logits(_logits(d, d.ind.train_features), torch.from_numpy(d.ind.train_labels))
    return detector.predict_logits(_logits(d, d.test))


REFERENCE = {
    "pood:vim": lambda d: _features(pood.ViM(None, d=DIM // 2, w=_linear(d).weight, b=_linear(d).bias), d),
    "pood:gen": lambda d: _on_logits(pood.GEN(None, gamma=0.1, M=100), d),
    "pood:nnguide": lambda d: _features(pood.NNGuide(None, head=_linear(d), k=10), d),
    "pood:fdbd": lambda d: _features(pood.fDBD(None, head=_linear(d)), d, labels=False),
    "pood:klmatching": lambda d: _on_logits(pood.KLMatching(None), d, fit=True),
    "pood:she": lambda d: _features(pood.SHE(None, head=_linear(d)), d),
    "pood:nci": lambda d: _features(pood.NCI(None, head=_linear(d), alpha=0.0), d, labels=False),
    "pood:pnml": lambda d: _features(pood.PNML(None, head=_linear(d)), d),
    "pood:maxsoftmax": lambda d: _on_logits(pood.MaxSoftmax(None), d),
    "pood:maxlogit": lambda d: _on_logits(pood.MaxLogit(None), d),
    "pood:energybased": lambda d: _on_logits(pood.EnergyBased(None), d),
    "pood:entropy": lambda d: _on_logits(pood.Entropy(None), d),
    "pood:temperaturescaling": lambda d: _on_logits(pood.TemperatureScaling(None), d, fit=True),
    "pood:gradnorm": lambda d: pood.GradNorm(_linear(d), param_filter=lambda n: n == "weight").predict(
        torch.from_numpy(d.test)
    ),
    "pood:graduncertainty": lambda d: pood.GradUncertainty(_linear(d)).predict(torch.from_numpy(d.test)),
    "pood:mahalanobis": lambda d: _features(pood.Mahalanobis(None), d),
    "pood:rmd": lambda d: _features(pood.RMD(None), d),
    "pood:gmm": lambda d: _features(pood.GMM(None), d),
    "pood:knn": lambda d: _features(pood.KNN(None, k=50), d),
    "pood:mcm": lambda d: _features(pood.MCM(None, text_embeddings=torch.from_numpy(d.text)), d, fit=False),
}


@pytest.mark.parametrize("name", sorted(POOD_SCORES))
def test_equals_minus_pytorch_ood(name, data):
    assert name in REFERENCE, f"{name}: add pytorch-ood's direct call to REFERENCE"
    given = {"head": data.head, "seed": 0, "device": "cpu", "k": [5, 50], "temperature": 1.0}  # k: the largest --k
    score = build_score(name, **{i: given[i] for i in SCORES[name].inputs}).fit(data.ind)
    ours = score(data.test)
    reference = REFERENCE[name](data).detach().double().numpy()
    assert ours.dtype == np.float64 and ours.shape == (TEST,) and np.isfinite(ours).all()
    np.testing.assert_allclose(ours, -reference, rtol=1e-6, atol=1e-9)
    score.rows = 7  # in blocks of 7 rows (memory-bound detectors score so): the same numbers
    np.testing.assert_allclose(score(data.test), ours, rtol=1e-5, atol=1e-7)


def test_probe_head_is_the_lp_probe_fitted_once(data, monkeypatch):
    import utils.scores.linear_probe as lp

    calls = []
    original = lp.fit_linear_probe
    monkeypatch.setattr(lp, "fit_linear_probe", lambda *a, **k: calls.append(1) or original(*a, **k))
    ind = InDistribution(train_features=data.ind.train_features, train_labels=data.ind.train_labels)
    lp_maxlogit, lp_energy = build_score("lp_maxlogit").fit(ind), build_score("lp_energy").fit(ind)
    maxlogit, energy = (build_score(n, head=PROBE).fit(ind) for n in ("pood:maxlogit", "pood:energybased"))
    assert len(calls) == 1  # one probe for all four
    np.testing.assert_allclose(maxlogit(data.test), lp_maxlogit(data.test), rtol=1e-12)
    np.testing.assert_allclose(energy(data.test), lp_energy(data.test), rtol=1e-12)


def test_zero_shot_head_is_clips_classifier(data):
    """On the zero-shot head (100 x the class prompts), pytorch-ood's max-logit and energy are 100 x the zero-shot
    mis and energy (at T = 1/100), and its MCM is ours (whose values are its log-odds)."""
    from utils.scores.zero_shot import MCM

    ind, x, head = data.ind, data.test, Head.zero_shot(data.text, 100.0)
    maxlogit, energy = (build_score(n, head=head).fit(ind)(x) for n in ("pood:maxlogit", "pood:energybased"))
    np.testing.assert_allclose(maxlogit, 100 * build_score("mis").fit(ind)(x), rtol=1e-6)
    np.testing.assert_allclose(energy, 100 * build_score("energy", temperature=0.01).fit(ind)(x), rtol=1e-6)
    np.testing.assert_allclose(
        build_score("pood:mcm").fit(ind)(x), MCM.plain(build_score("mcm").fit(ind)(x)), rtol=1e-5
    )


def test_she_without_a_correct_prediction_in_a_class_warns(data):
    weight = data.weight.copy()
    weight[0] = -10 * weight[0]  # class 0 is never predicted
    with pytest.warns(UserWarning, match=r"no correctly classified train feature in classes \[0\]"):
        score = build_score("pood:she", head=Head(weight, data.bias)).fit(data.ind)
    assert np.isfinite(score(data.test)).all()


def test_every_pytorch_ood_detector_runs_or_says_why():
    detectors = [name for name, cls in inspect.getmembers(pood, inspect.isclass) if issubclass(cls, Detector)]
    assert {d.cls for d in DETECTORS.values()} | set(UNAVAILABLE) == set(detectors)
    assert not {d.cls for d in DETECTORS.values()} & set(UNAVAILABLE)
    for name, reason in UNAVAILABLE.items():
        assert len(reason) > 30
        with pytest.raises(ValueError, match="is not available: it"):
            canonical(f"pood:{name}")


def test_names_are_case_insensitive():
    for name in ("pood:ViM", "pood:GEN", "pood:NNGuide", "pood:fDBD", "pood:KLMatching", "pood:SHE", "POOD:vim"):
        assert canonical(name) == name.lower()
    assert (vim_dim(2048), vim_dim(1024), vim_dim(768), vim_dim(512), vim_dim(16)) == (1000, 512, 512, 256, 8)


def test_all_includes_them_or_says_why(capsys):
    head_free = ["pood:mahalanobis", "pood:rmd", "pood:gmm", "pood:knn"]
    assert set(POOD_SCORES) <= set(plan(["all"], Experiment(EvalOptions(), "tiny")))
    image_only = Experiment(EvalOptions(), "timm:test_vit")
    assert [s for s in plan(["all"], image_only) if s.startswith("pood:")] == head_free
    err = capsys.readouterr().err
    assert "skipping pood:vim, pood:gen" in err and "--pood-head probe reads the linear probe instead" in err
    probe = Experiment(EvalOptions(settings={"pood_head": "probe"}), "timm:test_vit")
    assert set(POOD_SCORES) - {"pood:mcm"} <= set(plan(["all"], probe))  # MCM compares with the class prompts
    with pytest.raises(SystemExit):
        eval_ood_detection.main(["--list-scores"])
    listed = capsys.readouterr().out
    assert "pood:vim " in listed and "pood:react " in listed and "unavailable: clips" in listed


def test_end_to_end(tmp_path):
    """The default zero-shot head, its class prompts encoded for it (no score here reads text_features)."""
    summary = run(tmp_path, "--in", "digits", "--score", "pood:ViM", "pood:GEN", "--limit", "60", "--no-plots")
    assert set(summary["metrics"]) == {"pood:vim", "pood:gen"}
    for metrics in summary["metrics"].values():
        assert set(metrics) == {"digits_ood", "faces", "skimage_textures"}
        assert all(np.isfinite(list(m.values())).all() for m in metrics.values())


def test_only_detectors_that_fit_or_read_the_probe_load_the_train_split(data):
    from utils.evaluation.inputs import needs_train

    zero_shot, probe = EvalOptions(), EvalOptions(settings={"pood_head": "probe"})
    assert not needs_train(["pood:gen", "pood:maxsoftmax", "pood:gradnorm", "pood:mcm"], zero_shot)
    assert needs_train(["pood:gen"], probe) and needs_train(["pood:vim"], zero_shot)
    head = Head.probe(data.ind.train_features, data.ind.train_labels)  # the probe's data in the head, none in `ind`
    gen = build_score("pood:gen", head=head).fit(InDistribution())
    reference = build_score("pood:gen", head=PROBE).fit(data.ind)
    np.testing.assert_allclose(gen(data.test), reference(data.test), rtol=1e-12)


def test_a_siglip_models_bias_is_in_the_zero_shot_head(data):
    head = Head.zero_shot(data.text, 10.0, logit_bias=-10.0)
    np.testing.assert_allclose(head.weight, 10.0 * data.text.astype(np.float64))
    assert head.bias.tolist() == [-10.0] * CLASSES
    assert Head.zero_shot(data.text, 100.0).bias.tolist() == [0.0] * CLASSES

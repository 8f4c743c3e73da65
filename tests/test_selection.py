"""--select: hyper-parameters chosen on validation data, with the test sets read only after the choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import eval_ood_detection
import utils.evaluation.pipeline
from tests.conftest import write_images
from tests.test_openood import TINY, fake_cifar10
from utils.data.registry import get_spec
from utils.data.splits import DataOptions, load_dataset
from utils.data.validation import validation_data
from utils.errors import UserError
from utils.evaluation import selection


def run(tmp_path, *extra, out="out"):
    argv = [*TINY, "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / out), "--no-plots", *extra]
    return eval_ood_detection.main(argv)


@pytest.mark.parametrize(
    ("items", "grid"),
    [(["T=0.5,1,2"], {"temperature": [0.5, 1.0, 2.0]}),
     (["k=10,50", "lambda=0.5"], {"k": [10, 50], "gl_lambda": [0.5]}),
     (["temperature=2,2,1", "groups=1,100"], {"temperature": [2.0, 1.0], "neg_groups": [1, 100]})],
)  # fmt: skip
def test_parse_grid(items, grid):
    assert selection.parse_grid(items) == grid


@pytest.mark.parametrize(
    ("items", "message"),
    [(["T"], "NAME=V1,V2"), (["alpha=1"], "NAME=V1,V2"), (["k=1.5"], "--k must be an integer, got '1.5'"),
     (["T=0,1"], "--temperature must be a positive finite number, got 0"), (["T=nan"], "positive finite number"),
     (["T=1", "t=2"], "names temperature twice"), (["k="], "one or more values"), (["k=0"], "between 1 and"),
     (["lambda=-1"], "--gl-lambda must be a finite number >= 0")],
)  # fmt: skip
def test_parse_grid_refuses(items, message):
    with pytest.raises(UserError, match=message):
        selection.parse_grid(items)


def _mcm_auroc(features_id, features_ood, text, temperature):
    def mcm(features):
        logits = features.astype(np.float64) @ text.T.astype(np.float64) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).max(axis=1)

    id_scores, ood_scores = mcm(features_id), mcm(features_ood)
    labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return roc_auc_score(labels, np.r_[id_scores, ood_scores])


def test_openood_choice_is_the_best_validation_auroc(tmp_path, tiny):
    """On OpenOOD's val lists, the chosen T is the argmax of MCM's AUROC computed here from the same features; the
    test numbers are those of a plain run at that T."""
    from utils.features.images import image_features
    from utils.features.store import FeatureCache
    from utils.features.text import text_embeddings

    fake_cifar10(tmp_path / "data")
    data = ["--data-root", str(tmp_path / "data"), "--no-download", "--in", "openood_cifar10", "--score", "mcm"]
    temperatures = [1.0, 0.05, 0.005]
    run(tmp_path, *data, "--select", "T=" + ",".join(map(str, temperatures)))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["selection"]["mcm"]
    assert saved["split"] == "openood_cifar10 val split vs openood_cifar10:tin (val)"

    cache = FeatureCache(tmp_path / "cache", "float16")
    id_val = load_dataset("openood_cifar10", "val", tmp_path / "data", download=False)
    ood_val = load_dataset("openood_cifar10:tin", "val", tmp_path / "data", download=False)
    features = [image_features(tiny, d, cache, 64, 0).features for d in (id_val, ood_val)]
    text = text_embeddings(tiny, id_val.classnames, ("a photo of a {}.",))
    expected = [_mcm_auroc(*features, text, t) for t in temperatures]
    assert [t["AUROC"] for t in saved["tried"]] == pytest.approx(expected, abs=1e-6)
    assert np.argmax(expected) == 2 and min(expected) < max(expected)  # the last setting wins here: no default
    assert saved["chosen"] == {"temperature": temperatures[int(np.argmax(expected))]}

    run(tmp_path, *data, "--temperature", str(saved["chosen"]["temperature"]), out="plain")
    chosen = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())["metrics"]
    assert chosen == plain


def test_test_sets_are_read_only_after_the_choice(tmp_path, monkeypatch):
    log = []
    encode_one, choose = utils.evaluation.pipeline.image_features, selection.choose

    def logged_features(bundle, data, *args, **kwargs):
        log.append((data.name, data.split))
        return encode_one(bundle, data, *args, **kwargs)

    def logged_choose(*args, **kwargs):
        log.append("choice")
        return choose(*args, **kwargs)

    monkeypatch.setattr(utils.evaluation.pipeline, "image_features", logged_features)
    monkeypatch.setattr(selection, "choose", logged_choose)
    run(tmp_path, "--in", "digits", "--score", "mcm", "knn", "--select", "T=0.1,1", "k=5,10",
        "--select-ood", "digits_aux")  # fmt: skip
    before, after = log[: log.index("choice")], log[log.index("choice") + 1 :]
    tests = {("digits", "test"), ("digits_ood", "test"), ("faces", "test"), ("skimage_textures", "test")}
    assert not tests & set(before) and tests <= set(after)
    assert ("digits_aux", "test") in before and ("digits", "train") in before


def test_holdout_is_left_out_of_the_fit(tmp_path, tiny):
    """While choosing, scores fit on ID train minus the held-out slice, which is the ID validation set."""
    from utils.evaluation.inputs import Experiment
    from utils.evaluation.options import EvalOptions
    from utils.features.store import FeatureCache

    data = DataOptions(seed=3)
    exp = Experiment(EvalOptions(workers=0), "tiny", id_train=data.load("digits", "train"))
    exp.bundle, exp.cache = tiny, FeatureCache(tmp_path / "cache", "float16")
    val = validation_data(get_spec("digits"), "digits", data, ["digits_aux"], 0.2, [data.load("digits_ood", "test")])
    encoded = selection.encode_validation(exp, val, ["knn"])
    held = np.asarray(val.id_val.dataset.indices)
    labels = np.asarray([exp.id_train.dataset[int(i)][1] for i in range(630)])
    per_class = np.bincount(labels)
    assert np.array_equal(np.bincount(labels[held]), np.round(0.2 * per_class).astype(int))  # stratified
    assert len(encoded.id_train.index) == 630 - len(held)
    assert not set(held) & set(encoded.id_train.index.tolist())
    assert np.array_equal(encoded.id_test["global"].index, held)  # cut from the train features, not re-encoded
    assert len(list((tmp_path / "cache").rglob("features.npy"))) == 2  # train and digits_aux only


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--select", "T=1,2"], "name one or more sets with --select-ood"),
     (["--select", "T=1,2", "--select-ood", "digits_ood"], "digits_ood (test) is the test set digits_ood (test)"),
     (["--select", "T=1,2", "--select-ood", "digits"], "digits (test) is the test set digits (test)"),
     (["--select-ood", "digits_aux"], "--select-ood only applies with --select"),
     (["--select", "T=1", "--select-ood", "nowhere"], "unknown dataset 'nowhere'"),
     (["--select", "k=5,600", "--select-ood", "digits_aux", "--score", "knn"],
      "--select k=600 needs at least that many training images; while choosing, scores fit on"),
     (["--select", "k=5", "--score", "mcm"], "--select k: none of the scores mcm reads it"),
     (["--select", "T=1,2", "--score", "mis"], "--select temperature: none of the scores mis reads it"),
     (["--select", "T=1", "--select-ood", "digits_aux", "--select-holdout", "1.5"], "strictly between 0 and 1")],
)  # fmt: skip
def test_select_errors(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--in", "digits", *extra)
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _two_class_tree(root, seed):
    for split in ("train", "val"):
        for k, name in enumerate(("cats", "dogs")):
            write_images(root / split / name, 4, seed=seed + 10 * k + (split == "val"), size=12)
    return root


def test_shifted_test_images_are_not_validation_data(tmp_path, capsys):
    tree, shifted = _two_class_tree(tmp_path / "a", 0), _two_class_tree(tmp_path / "b", 50)
    with pytest.raises(SystemExit):
        run(tmp_path, "--in", f"folder:{tree}", "--out", "digits_ood", "--shifted-id", f"folder:{shifted}",
            "--select", "T=1,2", "--select-ood", f"folder:{shifted}")  # fmt: skip
    assert f"--select-ood folder:{shifted} (test) is the test set folder:{shifted} (test)" in capsys.readouterr().err


def test_choice_prompts_with_the_given_classnames(tmp_path, monkeypatch):
    seen = []
    choose = selection.choose

    def spy(exp, val, *args):
        seen.append(val.id_val.classnames)
        return choose(exp, val, *args)

    monkeypatch.setattr(selection, "choose", spy)
    names = "zero,one,two,three,four"
    run(tmp_path, "--in", "digits", "--classnames", names, "--select", "T=0.1,1", "--select-ood", "digits_aux")
    assert seen == [tuple(names.split(","))]


@pytest.mark.parametrize(
    ("val", "test", "refused"),
    [(("openood_cifar10:cifar100", "test"), ("cifar100", "test"), True),
     (("openood_cifar100:cifar10", "test"), ("openood_cifar10", "test"), True),
     (("places", "test"), ("places365", "test"), True),
     (("openood_imagenet:textures", "test"), ("openood_cifar10:texture", "test"), True),
     (("openood_cifar10:tin", "val"), ("openood_cifar10:tin", "test"), False),
     (("digits_ood", "train"), ("digits_ood", "test"), False),
     (("digits_aux", "test"), ("digits_ood", "test"), False)],
)  # fmt: skip
def test_a_source_shared_with_a_test_set_is_refused(val, test, refused):
    """OpenOOD's copies of cifar100, textures, ... hold the images of the registry's own sets."""
    from utils.data.splits import LoadedDataset
    from utils.data.validation import _refuse_test_sets

    sets = [LoadedDataset(name, split, None, None, "") for name, split in (val, test)]
    if refused:
        with pytest.raises(UserError, match=f"--select-ood {val[0]} \\({val[1]}\\) "):
            _refuse_test_sets(sets[:1], sets[1:])
    else:
        _refuse_test_sets(sets[:1], sets[1:])


def test_ties_go_to_the_first_setting_in_grid_order(tmp_path):
    """At large T, MCM ranks the images alike for 2000 and 1000: the grid's first wins, whatever its value."""
    run(tmp_path, "--in", "digits", "--select", "T=2000,1000", "--select-ood", "digits_aux")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["selection"]["mcm"]
    assert saved["tried"][0]["AUROC"] == saved["tried"][1]["AUROC"]
    assert saved["chosen"] == {"temperature": 2000.0}


def test_grid_k_replaces_the_default_k_in_the_early_checks(tmp_path):
    """With 5 shots per class the default k = 50 would not fit; the grid's k do."""
    run(tmp_path, "--in", "digits", "--shots", "5", "--score", "knn", "--select", "k=1,3", "--select-ood",
        "digits_aux", "--select-holdout", "0.2")  # fmt: skip
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["selection"]["knn"]
    assert [t["k"] for t in saved["tried"]] == [1, 3] and "20 of 25" not in saved["split"]
    assert saved["split"].startswith("digits train, 5 of 25 held out")

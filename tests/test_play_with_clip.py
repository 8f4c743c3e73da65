"""play_with_clip.py: every mode end to end on the tiny model, the Python API, and bad inputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import play_with_clip
import utils.features.images
from tests.conftest import assert_one_clear_error
from utils.errors import UserError
from utils.models.loading import load_model
from utils.models.weights import fingerprint

TINY = ["--model", "tiny", "--pretrained", "none", "--workers", "0", "--batch-size", "128"]
OPTIONS = {"model": "tiny", "pretrained": "none", "workers": 0, "batch_size": 128}


def run(tmp_path, *extra, out="out"):
    return play_with_clip.main(
        [*TINY, "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / out), *extra]
    )


def _saved(tmp_path, out="out") -> dict:
    return json.loads((tmp_path / out / "results.json").read_text())


def test_zeroshot(tmp_path):
    results = run(tmp_path, "--mode", "zeroshot", "--in", "digits")
    saved = _saved(tmp_path)
    assert 0 <= saved["top1"] <= saved["top5"] <= 1
    assert set(saved["per_class"]) == {"digit zero", "digit one", "digit two", "digit three", "digit four"}
    assert all(0 <= v <= 1 for v in saved["per_class"].values())
    assert saved["top1"] == results["top1"] and saved["mode"] == "zeroshot"
    assert (tmp_path / "out" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_other_labels_and_templates_reuse_the_cache(tmp_path, monkeypatch):
    run(tmp_path, "--mode", "zeroshot", "--in", "digits", out="a")
    calls = []
    original = utils.features.images.extract
    monkeypatch.setattr(utils.features.images, "extract", lambda *a, **k: calls.append(a) or original(*a, **k))
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n2\n3\n4\n")
    results = run(tmp_path, "--mode", "zeroshot", "--in", "digits", "--test-labels", str(labels),
                  "--templates", "ensemble", out="b")  # fmt: skip
    assert calls == [] and set(results["per_class"]) == {"0", "1", "2", "3", "4"}


@pytest.mark.parametrize(("labels", "message"), [("a,b,c", "3 labels but digits has 5 classes"), (" , ,", "empty")])
def test_test_labels_errors(tmp_path, capsys, labels, message):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--mode", "zeroshot", "--in", "digits", "--test-labels", labels)
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_test_labels_file_not_utf8(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"\xff\xfe zero\n")
    with pytest.raises(SystemExit):
        run(tmp_path, "--mode", "zeroshot", "--in", "digits", "--test-labels", str(labels))
    assert "not UTF-8" in capsys.readouterr().err


def test_frozen_linear_probe_is_a_real_classifier(tmp_path, monkeypatch):
    loaded = []
    original = play_with_clip._load
    monkeypatch.setattr(play_with_clip, "_load", lambda *a: loaded.append(original(*a)) or loaded[-1])
    results = run(tmp_path, "--mode", "linear_probe", "--in", "digits")
    assert results["accuracy"] > 0.6  # chance is 0.2: random tiny features of real digits are still informative
    assert _saved(tmp_path)["C"] > 0 and 0 <= _saved(tmp_path)["accuracy"] <= 1
    assert fingerprint(loaded[0].model) == loaded[0].fingerprint  # bit-identical encoder


def test_frozen_check_catches_a_moving_encoder(tmp_path, monkeypatch, capsys):
    loaded = []
    original_load, original_fit = play_with_clip._load, play_with_clip.fit_linear_probe
    monkeypatch.setattr(play_with_clip, "_load", lambda *a: loaded.append(original_load(*a)) or loaded[-1])

    def fit_and_touch(*args, **kwargs):
        with torch.no_grad():
            next(loaded[0].model.visual.parameters()).add_(1e-3)
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(play_with_clip, "fit_linear_probe", fit_and_touch)
    with pytest.raises(RuntimeError, match="weights changed"):
        run(tmp_path, "--mode", "linear_probe", "--in", "digits", "--limit", "100")


def test_finetune_saves_a_checkpoint_eval_can_load(tmp_path):
    results = run(tmp_path, "--mode", "linear_probe", "--in", "digits", "--finetune", "--epochs", "2",
                  "--limit", "80", "--batch-size", "40", "--lr", "1e-4")  # fmt: skip
    assert 0 <= results["accuracy"] <= 1 and len(results["losses"]) == 2
    assert all(np.isfinite(results["losses"]))
    ckpt = tmp_path / "out" / "final.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["head_weight"].shape == (5, 64) and saved["method"] == "linear_probe_finetune"
    tuned, base = load_model("tiny", "none", ckpt=str(ckpt)), load_model("tiny", "none", seed=0)
    text_keys = [k for k in base.model.state_dict() if not k.startswith("visual.")]
    for key in text_keys:  # the text tower is untouched
        assert torch.equal(tuned.model.state_dict()[key], base.model.state_dict()[key]), key
    assert not torch.equal(tuned.model.visual.proj, base.model.visual.proj)  # the image tower trained


def test_skimage_playground(tmp_path):
    results = run(tmp_path, "--mode", "skimage", "--images", "astronaut", "chelsea", "horse")
    similarity = np.array(_saved(tmp_path)["similarity"])
    assert similarity.shape == (3, 3) and np.all(np.abs(similarity) <= 1 + 1e-5)
    assert set(results["top5"]) == {"astronaut", "chelsea", "horse"}
    for ranked in results["top5"].values():
        probabilities = [p for _, p in ranked]
        assert len(ranked) == 5 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
    for png in ("similarity.png", "top5.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_python_api(tmp_path):
    common = {**OPTIONS, "cache_dir": str(tmp_path / "cache")}
    zs = play_with_clip.zero_shot_evaluation_CLIP("digits", test_labels=["o", "i", "ii", "iii", "iv"], limit=50,
                                                  out_dir=str(tmp_path / "zs"), **common)  # fmt: skip
    assert set(zs["per_class"]) <= {"o", "i", "ii", "iii", "iv"} and (tmp_path / "zs" / "results.json").exists()
    lp = play_with_clip.linear_probe_evaluation_CLIP("digits", limit=100, out_dir=str(tmp_path / "lp"), **common)
    assert 0 <= lp["accuracy"] <= 1
    sk = play_with_clip.play_with_skimage(images=["rocket"], out_dir=str(tmp_path / "sk"), **common)
    assert list(sk["top5"]) == ["rocket"]
    with pytest.raises(TypeError, match="unknown options"):
        play_with_clip.play_with_skimage(colour="blue", **common)
    with pytest.raises(UserError, match=r"--warmup must be a share in \[0, 1\), got -0.05"):  # as the flag checks
        play_with_clip.linear_probe_evaluation_CLIP("digits", finetune=True, warmup=-0.05, **common)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--mode", "dance"], "invalid choice"),
        (["--mode", "zeroshot", "--in", "nowhere"], "unknown dataset 'nowhere'"),
        (["--mode", "zeroshot", "--in", "digits", "--model", "timm:test_vit"], "has no text encoder"),
        (["--mode", "skimage", "--model", "timm:test_vit"], "has no text encoder"),
        (["--mode", "linear_probe", "--in", "digits", "--warmup", "1.5"], "--warmup"),
        (["--mode", "zeroshot", "--in", "digits", "--ckpt", "nowhere.pt"], "checkpoint file not found"),
        (["--mode", "zeroshot", "--in", "digits", "--test-labels", "a,b,c,a,b"], "names 'a', 'b' more than once"),
        (["--mode", "zeroshot", "--in", "one_digit"], "has one class: zero-shot classification among one label"),
    ],
)
def test_bad_input(tmp_path, capsys, monkeypatch, argv, expected):
    from utils.data.digits import Digits
    from utils.data.registry import DATASETS

    one = dataclasses.replace(DATASETS["digits"], build=lambda root, split, download: Digits(split, (0,)),
                              classnames=["digit zero"])  # fmt: skip
    monkeypatch.setitem(DATASETS, "one_digit", one)  # a labelled set of one class
    assert_one_clear_error(lambda: run(tmp_path, *argv), capsys, expected, tmp_path / "out")


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    ckpt = tmp_path / "vit.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3, 3)}}, ckpt)
    with pytest.raises(SystemExit):
        run(tmp_path, "--mode", "zeroshot", "--in", "digits", "--ckpt", str(ckpt))
    assert "does not fit architecture tiny" in capsys.readouterr().err

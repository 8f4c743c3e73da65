"""SeTAR (--transform setar): the release's rank rule, its greedy search restated and compared, the eval wiring."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import eval_ood_detection
from bench.setar import release_apply, release_search
from tests.conftest import assert_one_clear_error, write_images
from utils.data.splits import DataOptions, few_shot
from utils.errors import UserError
from utils.evaluation.setar_search import search_images
from utils.models import setar
from utils.models.loading import load_model

PROMPT = "a photo of a {}"  # the release's prompt, no full stop (--templates mcm)


@pytest.mark.parametrize(("full", "dropped"), [
    (768, {0.05: 38, 0.10: 77, 0.15: 115, 0.20: 154, 0.25: 192, 0.30: 230, 0.35: 269, 0.40: 307}),
    (512, {0.05: 26, 0.10: 51, 0.15: 77, 0.20: 102, 0.25: 128, 0.30: 154, 0.35: 179, 0.40: 205}),
])  # fmt: skip
def test_kept_rank_drops_the_release_counts(full, dropped):
    """ViT-B/16's vision (768) and text (512) up-projections: the counts round(full · ratio) the release removes."""
    for ratio, count in dropped.items():
        assert setar.kept_rank(full, ratio) == full - count


def test_low_rank_is_the_best_rank_k_approximation():
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 30)
    original = layer.weight.detach().clone()
    low = setar.LowRank(layer)
    assert torch.equal(low.weight(0), original)  # ratio 0: bit-exact, no SVD
    approx = low.weight(0.25)  # 12 - round(3) = 9 directions kept
    s = torch.linalg.svdvals(original.double())
    assert torch.linalg.matrix_rank(approx.double(), rtol=1e-5) == 9
    assert float(torch.linalg.norm(original - approx) ** 2) == pytest.approx(float((s[9:] ** 2).sum()), rel=1e-4)
    low.set(0.25)
    assert torch.equal(layer.weight, approx)
    low.set(0)
    assert torch.equal(layer.weight, original)


def test_search_order_is_vision_then_text_last_block_first(tiny):
    assert list(setar.up_projections(tiny.model)) == ["visual.2", "visual.1", "visual.0", "text.1", "text.0"]


def test_a_ratio_that_keeps_nothing_is_refused_before_the_search(tiny):
    setar.check_keeps_some(tiny.model, [0, 0.4])
    with pytest.raises(UserError, match="keeps no singular direction"):
        setar.check_keeps_some(tiny.model, [0, 0.999])


def test_ratio_grid_must_start_with_zero():
    assert setar.check_ratios([0, 0.1, 0.1, 0.2]) == [0, 0.1, 0.2]
    for bad in ([0.1, 0.2], [], [0, 1.0]):
        with pytest.raises(UserError, match="starting with 0"):
            setar.check_ratios(bad)


def _digits_images(bundle, shots=3):
    train = DataOptions().load("digits", "train")
    picked = few_shot(train.dataset, shots, seed=0)
    items = [picked[i] for i in range(len(picked))]
    images = torch.stack([bundle.preprocess(image) for image, _ in items])
    return images, torch.tensor([label for _, label in items]), [PROMPT.format(c) for c in train.classnames]


def test_search_equals_the_release_restated():
    """bench/setar.py restates the release's search: a fresh model per candidate, torch.svd's split, both towers
    encoded in full, ratio 0 at every step. Same chosen ratios, same best loss, the same loss for every candidate
    the release computes (ours skips ratio 0 after the first step: it is the current model, whose loss the release
    computes to the running best)."""
    bundle = load_model("tiny", "none", device="cpu", seed=3)
    pristine = copy.deepcopy(bundle)
    images, labels, prompts = _digits_images(bundle)
    ratios, lam, top_k, batch = [0, 0.1, 0.25, 0.4], 0.1, 2, 4  # batches of 4, 4, 4, 3: pooling and weighting matter
    ours = setar.search(bundle, images, labels, prompts, lam, top_k, ratios, batch, progress=False)
    chosen, best, trace = release_search(pristine, images, labels, prompts, lam, top_k, ratios, batch)
    assert ours.ratios == chosen and ours.ratios  # something was accepted, and something not (the test can fail)
    assert len(chosen) < len(trace) // len(ratios)
    assert ours.loss == pytest.approx(best, abs=1e-6)
    release = {(name, ratio): loss for name, ratio, loss in trace}
    computed = [s for s in ours.steps if s.loss is not None]
    assert len(computed) == len(trace) - (len(trace) // len(ratios) - 1)
    for step in computed:
        assert step.loss == pytest.approx(release[step.matrix, step.ratio], abs=1e-6)
    # the model is left as the release would build it from the pretrained weights
    rebuilt = copy.deepcopy(pristine.model)
    release_apply(rebuilt, list(chosen.items()))
    for name, layer in setar.up_projections(bundle.model).items():
        assert torch.allclose(layer.weight, setar.up_projections(rebuilt)[name].weight, atol=1e-6)


# --- through eval_ood_detection.py ---


def _run(tmp_path, *extra, out="run"):
    args = ["--in", "digits", "--model", "tiny", "--pretrained", "none", "--score", "mcm", "gl_mcm", "--templates",
            "mcm", "--out-dir", str(tmp_path / out), "--overwrite", "--cache-dir", str(tmp_path / "cache"),
            "--no-plots", "--workers", "0", "--limit", "60", *extra]  # fmt: skip
    result = eval_ood_detection.main(args)
    return result, json.loads((tmp_path / out / "results.json").read_text())


def _metadata(saved):
    return saved.get("metadata", saved)


def test_eval_records_the_search_and_caches_it(tmp_path, capsys):
    plain, _ = _run(tmp_path, out="plain")
    first, saved = _run(tmp_path, "--transform", "setar", "--setar-shots", "3", "--setar-ratios", "0", "0.2", "0.4")
    record = _metadata(saved)["model_transform"]
    assert record["name"] == "setar" and record["from_cache"] is None and record["image_count"] == 15
    assert record["ratios"] and set(record["ratios"]) <= {"visual.2", "visual.1", "visual.0", "text.1", "text.0"}
    assert record["loss_after"] < record["loss_before"]
    assert _metadata(saved)["model_weights"] == "random + setar"
    assert first["metrics"] != plain["metrics"]  # other weights encode: the cache did not hand back plain features
    again, saved = _run(tmp_path, "--transform", "setar", "--setar-shots", "3", "--setar-ratios", "0", "0.2", "0.4",
                        out="again")  # fmt: skip
    cached = _metadata(saved)["model_transform"]
    assert cached["from_cache"] and cached["ratios"] == record["ratios"]
    assert again["metrics"] == first["metrics"]
    Path(cached["from_cache"]).write_text("{not json")
    damaged, saved = _run(tmp_path, "--transform", "setar", "--setar-shots", "3", "--setar-ratios", "0", "0.2", "0.4",
                          out="damaged")  # fmt: skip
    assert _metadata(saved)["model_transform"]["from_cache"] is None
    assert any("damaged; searched again" in note for note in damaged["notes"])
    assert damaged["metrics"] == first["metrics"]
    for other in (["--setar-lambda", "0.3"], ["--seed", "1"], ["--setar-batch", "4"], ["--templates", "single"]):
        _, saved = _run(tmp_path, "--transform", "setar", "--setar-shots", "3", "--setar-ratios", "0", "0.2", "0.4",
                        *other, out="other")  # the last --templates wins  # fmt: skip
        assert _metadata(saved)["model_transform"]["from_cache"] is None, other  # it decides the search: searched


def test_a_search_that_misses_classes_says_so(tmp_path):
    result, saved = _run(tmp_path, "--transform", "setar", "--setar-ratios", "0", "0.4", "--limit", "3")
    covered = _metadata(saved)["model_transform"]["classes_covered"]
    assert covered <= 3 and any(f"cover {covered} of the 5 ID classes" in note for note in result["notes"])


@pytest.mark.parametrize(("extra", "expected"), [
    (["--setar-lambda", "0.5"], "--setar-lambda only applies with --transform setar"),
    (["--transform", "setar", "--setar-ratios", "0.1", "0.2"], "starting with 0"),
    (["--transform", "setar", "--setar-images", "/nowhere.txt"], "--setar-images /nowhere.txt: no such file"),
    (["--transform", "setar", "--templates", "ensemble"], "one text prompt per class"),
    (["--transform", "setar", "--setar-top-k", "5"], "between 1 and the class count - 1 (4)"),
    (["--transform", "setar", "--setar-shots", "2", "--setar-images", "imagenet1k"], "give one of them"),
])  # fmt: skip
def test_bad_settings_are_one_clear_error(tmp_path, capsys, extra, expected):
    out = tmp_path / "out"
    args = ["--in", "digits", "--model", "tiny", "--pretrained", "none", "--out-dir", str(out), "--workers", "0",
            "--cache-dir", str(tmp_path / "cache"), "--limit", "30", *extra]  # fmt: skip
    assert_one_clear_error(lambda: eval_ood_detection.main(args), capsys, expected, out)


def test_a_names_file_picks_exactly_those_train_files(tmp_path):
    root = tmp_path / "set"
    for k, name in enumerate(["cats", "dogs"]):
        write_images(root / "train" / name, 4, seed=k)
        write_images(root / "val" / name, 2, seed=5 + k)
    train = DataOptions().load(f"folder:{root}", "train")
    listing = tmp_path / "names.txt"
    for text, expected in [("img_001.png\n", "1 name several files"), ("cats/nothing.png\n", "1 are not in")]:
        listing.write_text(text)
        with pytest.raises(UserError, match=expected):
            search_images(train, 1, 0, str(listing))
    listing.write_text("cats/img_001.png\ndogs/img_003.png\n")
    subset, how = search_images(train, 1, 0, str(listing))
    assert [Path(train.dataset.samples[i][0]).parts[-2:] for i in subset.indices] == [
        ("cats", "img_001.png"),
        ("dogs", "img_003.png"),
    ]
    assert "the 2 files" in how


def test_the_release_list_names_one_train_image_per_imagenet_class():
    from utils.data import classnames
    from utils.evaluation.setar_search import RELEASE_LISTS

    lines = RELEASE_LISTS["imagenet1k"].read_text().splitlines()
    entries = [line for line in lines if line and not line.startswith("#")]
    wnids = [entry.split("/")[0] for entry in entries]
    assert len(entries) == 1000 and sorted(wnids) == sorted(classnames.imagenet1k())
    assert all(entry.split("/")[1].startswith(wnid + "_") for entry, wnid in zip(entries, wnids, strict=True))

"""eval_ood_detection.py end to end on the tiny model and the offline datasets."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import eval_ood_detection
import utils.features.images
from tests.conftest import assert_one_clear_error, write_images
from utils.data.registry import DATASETS
from utils.evaluation.inputs import RESOLVERS, requirements, score_settings
from utils.evaluation.metrics import METRICS
from utils.evaluation.presets import list_presets
from utils.scores import SCORES

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny", "--pretrained", "none", "--workers", "0", "--batch-size", "128"]
WORDS = [
    "tree",
    "banana",
    "cloud",
    "river",
    "mountain",
    "chair",
    "piano",
    "ocean",
    "house",
    "road",
    "lamp",
    "fox",
    "ice cream",
    "violin",
    "harbour",
    "desert",
    "candle",
    "bridge",
    "forest",
    "kettle",
]  # nouns, one multi-word
ADJECTIVES = ["red", "quiet", "wooden", "bright", "sour", "tiny", "golden", "frozen", "loud", "soft", "round",
              "sharp", "bitter", "noisy"]  # fmt: skip


def run(tmp_path, *extra, out="out"):
    argv = [*TINY, "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / out), *extra]
    return eval_ood_detection.main(argv)


@pytest.fixture
def words(tmp_path):
    path = tmp_path / "words.txt"
    lines = [*WORDS, *(f"{word}\tadj" for word in ADJECTIVES)]  # an untagged word is a noun
    path.write_text("# a short candidate list for tests\n" + "\n".join(lines) + "\n")
    return path


def test_first_working_path_digits_mcm(tmp_path, capsys):
    summary = run(tmp_path, "--in", "digits", "--score", "MCM")
    folder = tmp_path / "out"
    saved = json.loads((folder / "results.json").read_text())
    metrics = saved["metrics"]["mcm"]["digits_ood"]
    assert set(metrics) == set(METRICS)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert saved["metrics"] == summary["metrics"]
    assert saved["samples"] == {"ID": 271, "digits_ood": 160, "faces": 100, "skimage_textures": 192}
    assert 0.0 <= saved["accuracy"]["zero_shot_top1"] <= 1.0
    assert saved["config"]["id_name"] == "digits" and "torch" in saved["packages"] and "git_commit" in saved
    printed = capsys.readouterr().out
    assert "| mcm | digits_ood |" in printed and f"{100 * metrics['AUROC']:.2f}" in printed
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert [r["ood"] for r in rows] == ["digits_ood", "faces", "skimage_textures", "average"]
    assert float(rows[0]["AUROC"]) == round(100 * metrics["AUROC"], 2)
    assert "| mcm | digits_ood |" in (folder / "results.md").read_text()
    for png in ("hist_mcm.png", "roc_mcm.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = np.load(folder / "scores.npz")
    assert scores["mcm/digits_ood/id"].shape == (271,) and scores["mcm/digits_ood/ood"].shape == (160,)


def test_every_score_one_extraction(tmp_path, words, monkeypatch):
    """`--score all`: one row per score x OOD set (+ averages); each dataset encoded once: a test set once in the
    local view (its first token is the global view), the train split once in the global view."""
    write_images(tmp_path / "noise", 20, seed=3)
    noise = f"folder:{tmp_path / 'noise'}"
    calls = []
    original = utils.features.images.extract
    monkeypatch.setattr(utils.features.images, "extract", lambda *a, **k: calls.append(a[1].name) or original(*a, **k))
    summary = run(tmp_path, "--in", "digits", "--out", "digits_ood", noise, "--score", "all", "--k", "5", "20",
                  "--neg-words", str(words), "--no-plots")  # fmt: skip
    # ID train once (global view); ID test and the two OOD sets once per view (global, and local for l_mcm/gl_mcm)
    assert sorted(calls) == sorted(["digits", "digits", "digits_ood", noise])  # ID: train and test
    run_supplied = {*RESOLVERS, *score_settings()}
    without_checkpoint = [s for s in SCORES if set(requirements(s)) <= run_supplied]  # all but the checkpoints'
    in_all = [s for s in without_checkpoint if not SCORES[s].not_in_all]  # csp, eoe, negrefine, adaneg: by name
    labels = [s for s in in_all if s != "knn"] + ["knn@5", "knn@20"]
    checkpoints = ["kplus1", "group", "negprompt", "idlike"]  # scores whose inputs only a --ckpt supplies
    assert len(labels) == len(SCORES) - 4 - len(checkpoints) + 1
    assert set(summary["metrics"]) == set(labels)
    for label in labels:
        expected = {"digits_ood"} if label == "oracle" else {"digits_ood", noise}  # the noise folder has no names
        assert set(summary["metrics"][label]) == expected
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    averages = [r for r in rows if r["ood"] == "average"]
    assert len(rows) == 2 * len(labels) + len(averages) and len(averages) == len(labels) - 1  # oracle's noise row:
    assert next(r for r in rows if r["score"] == "oracle" and r["ood"] == noise)["note"] == "not scored (see the notes)"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("oracle: skipped" in note for note in saved["notes"])
    assert 0.0 <= saved["accuracy"]["linear_probe_top1"] <= 1.0
    mined = [line.split("\t") for line in (tmp_path / "out" / "neglabel_words.txt").read_text().splitlines()]
    nouns, adjectives = [w for w, pos in mined if pos == "noun"], [w for w, pos in mined if pos == "adj"]
    assert mined == [[w, "noun"] for w in nouns] + [[w, "adj"] for w in adjectives]  # nouns first, as released
    assert set(nouns) <= set(WORDS) and len(nouns) == int(0.15 * len(WORDS))  # 15 % of each, floored
    assert set(adjectives) <= set(ADJECTIVES) and len(adjectives) == int(0.15 * len(ADJECTIVES))


def test_eoe_csp_negrefine_run_by_name_with_their_files(tmp_path):
    """EOE with the demo's envisioned names (and the release's JSON layout), CSP with a small pool, NegRefine with a
    small list: each scores every set and saves what it used."""
    names = ROOT / "configs" / "eoe" / "digits_far.txt"
    pool = str(_csp_pool(tmp_path))
    out = run(tmp_path, "--in", "digits", "--score", "eoe", "csp", "negrefine", "--eoe-names", str(names),
              "--csp-words", pool, "--negrefine-words", pool, "--no-plots")  # fmt: skip
    assert set(out["metrics"]) == {"eoe", "csp", "negrefine"}
    assert all(set(per_set) == {"digits_ood", "faces", "skimage_textures"} for per_set in out["metrics"].values())
    assert len((tmp_path / "out" / "negrefine_words.txt").read_text().splitlines()) == 50  # the list as given
    saved = (tmp_path / "out" / "eoe_words.txt").read_text().splitlines()
    assert len(saved) == 30 and saved[:2] == ["letter o", "letter l"]
    assert len((tmp_path / "out" / "csp_words.txt").read_text().splitlines()) == int(0.15 * 30) + int(0.15 * 20)
    release = tmp_path / "ImageNet_gpt_0.json"
    release.write_text(json.dumps({"far": ["River", "Digit One", "ring"]}))  # the release's layout
    again = run(tmp_path, "--in", "digits", "--score", "eoe", "--eoe-names", str(release), "--no-plots", out="json")
    assert (tmp_path / "json" / "eoe_words.txt").read_text().splitlines() == ["river", "ring"]  # ID name dropped
    assert set(again["metrics"]["eoe"]) == {"digits_ood", "faces", "skimage_textures"}


def test_adaneg_streams_id_with_each_ood_set_and_records_the_order(tmp_path, words):
    """AdaNeg through the script: each OOD set streamed with the ID set (so the ID scores differ per set), and the
    stream's seed and batch in results.json."""
    out = run(tmp_path, "--in", "digits", "--score", "adaneg", "--neg-words", str(words), "--adaneg-negatives", "10",
              "--adaneg-batch", "32", "--seed", "3", "--no-plots")  # fmt: skip
    assert set(out["metrics"]["adaneg"]) == {"digits_ood", "faces", "skimage_textures"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["ran"]["adaneg"] == {"stream_seed": 3, "stream_batch": 32, "images_per_label": 9, "adaneg_groups": 5}
    assert not any("adaneg_groups" in note for note in saved["notes"])
    run(tmp_path, "--in", "digits", "--score", "adaneg", "--neg-words", str(words), "--adaneg-negatives", "3",
        "--no-plots", out="capped")  # fmt: skip
    capped = json.loads((tmp_path / "capped" / "results.json").read_text())
    assert "adaneg: adaneg_groups 3 ran, not the 5 asked" in " ".join(capped["notes"])  # a cap is said
    scores = np.load(tmp_path / "out" / "scores.npz")
    assert not np.array_equal(scores["adaneg/digits_ood/id"], scores["adaneg/faces/id"])  # other company, other scores


def _csp_pool(tmp_path):
    pool = tmp_path / "csp.tsv"
    pool.write_text("\n".join([*(f"thing{i}" for i in range(30)), *(f"odd{i} area\tadj" for i in range(20))]) + "\n")
    return pool


def test_eoe_without_names_is_one_clear_error(tmp_path, capsys):
    assert_one_clear_error(lambda: run(tmp_path, "--in", "digits", "--score", "eoe"), capsys,
                           "eoe needs --eoe-names FILE", tmp_path / "out")  # fmt: skip


def test_rerun_with_other_score_does_no_forward_pass(tmp_path, monkeypatch):
    run(tmp_path, "--in", "digits", "--score", "mcm", "knn", out="a")
    calls = []
    original = utils.features.images.extract
    monkeypatch.setattr(utils.features.images, "extract", lambda *a, **k: calls.append(a) or original(*a, **k))
    second = run(tmp_path, "--in", "digits", "--score", "maxlogit", "rmd", "--k", "3", "--templates", "ensemble",
                 "--no-plots", out="b")  # fmt: skip
    assert calls == [] and set(second["metrics"]) == {"mis", "rmd"}


def test_bootstrap_intervals_in_outputs(tmp_path):
    run(tmp_path, "--in", "digits", "--score", "mcm", "--bootstrap", "1000", "--limit", "60", "--no-plots")
    assert "| average |" in (tmp_path / "out" / "results.md").read_text()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    low, high = saved["intervals"]["mcm"]["digits_ood"]["AUROC"]
    assert low <= saved["metrics"]["mcm"]["digits_ood"]["AUROC"] <= high
    row = next(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert set(row) >= {f"{m}_ci" for m in METRICS}


def test_image_only_timm_backbone(tmp_path, capsys):
    summary = run(tmp_path, "--in", "digits", "--model", "timm:test_vit", "--score", "all", "--limit", "40",
                  "--k", "5", "--no-plots")  # fmt: skip
    assert set(summary["metrics"]) == {"knn@5", "maha", "rmd", "lp_msp", "lp_energy", "lp_maxlogit", "pood:mahalanobis",
                                       "pood:rmd", "pood:gmm", "pood:knn"}  # fmt: skip
    assert "skipping mcm, mis" in capsys.readouterr().err


def test_trained_checkpoint_and_folder_ood(tmp_path, monkeypatch):
    """A --ckpt file is read once, its weights and contract both taken from that read."""
    import torch

    import utils.models.checkpoint
    from utils.models.loading import load_model

    ckpt = tmp_path / "final.pt"
    torch.save({"state_dict": load_model("tiny", "none", seed=7).model.state_dict()}, ckpt)
    write_images(tmp_path / "noise", 12, seed=3)
    noise = f"folder:{tmp_path / 'noise'}"
    reads, real = [], utils.models.checkpoint.read_file
    monkeypatch.setattr(utils.models.checkpoint, "read_file", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or _load(*a, **k))
    summary = run(tmp_path, "--in", "digits", "--out", noise, "digits_ood", "--ckpt", str(ckpt), "--score", "mcm",
                  "mis", "--no-plots")  # fmt: skip
    assert set(summary["metrics"]["mcm"]) == {noise, "digits_ood"}
    assert summary["samples"][noise] == 12
    assert reads == [str(ckpt)] * 2  # our one read_file, and the one torch.load inside it


_load = __import__("torch").load


def test_the_registry_is_asked_once_per_name(tmp_path, monkeypatch):
    """The benchmark is resolved once: each name given or implied is looked up in the registry once, and every
    loaded set carries its entry onward (KNN's default k, the splits, the OOD protocol)."""
    import utils.data.registry

    asked, real = [], utils.data.registry.get_spec
    monkeypatch.setattr(utils.data.registry, "get_spec", lambda name: asked.append(name) or real(name))
    for module in ("utils.data.benchmark", "utils.data.splits", "utils.data.validation"):
        monkeypatch.setattr(f"{module}.get_spec", utils.data.registry.get_spec)
    run(tmp_path, "--in", "digits", "--score", "mcm", "knn", "--no-plots")
    assert sorted(asked) == ["digits", "digits_ood", "faces", "skimage_textures"]


def test_overwrite_replaces_the_earlier_runs_files_and_keeps_others(tmp_path, capsys):
    run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "mcm", "knn")
    (tmp_path / "out" / "my_notes.md").write_text("mine")
    run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "mcm", "--overwrite")
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "hist_knn_k50.png" not in left and "hist_mcm.png" in left and "my_notes.md" in left
    assert "--overwrite: removed the earlier run's" in capsys.readouterr().err


def test_the_default_results_folder_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").write_text("a file where the results folder would go")
    with pytest.raises(SystemExit):
        eval_ood_detection.main([*TINY, "--in", "digits", "--cache-dir", str(tmp_path / "cache")])
    assert "the default results folder" in capsys.readouterr().err and not (tmp_path / "cache").exists()


def test_an_estimate_outside_its_bootstrap_interval_is_noted(monkeypatch):
    import utils.evaluation.pipeline as pipeline

    monkeypatch.setattr(pipeline, "bootstrap_intervals", lambda *a: {"AUROC": (0.0, 0.1)})
    result = pipeline.Evaluation("digits", scores={"mcm": {"faces": (np.array([1.0, 2.0]), np.array([0.0]))}})
    pipeline.measure(result, bootstrap=1000)
    assert result.notes == ["mcm vs faces: AUROC lie outside their bootstrap interval (a skewed statistic on these "
                            "few images)"]  # fmt: skip


def test_shots_beyond_every_class_are_noted(tmp_path):
    run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "knn", "--shots", "10000", "--no-plots")
    notes = json.loads((tmp_path / "out" / "results.json").read_text())["notes"]
    assert "--shots 10000: 5 of the 5 classes of digits train have fewer images and keep all of theirs (the whole " \
           "train split is used)" in notes  # fmt: skip


def test_a_capped_setting_is_recorded_as_it_ran(tmp_path, words, capsys):
    """34 words mine 5 negatives (3 nouns, 2 adjectives), so NegLabel's 100 groups become 5: results.json records
    what ran and one note says so."""
    run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "neglabel", "--neg-words", str(words),
        "--no-plots")  # fmt: skip
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["ran"]["neglabel"] == {"neg_groups": 5, "negatives": 5, "mined": 5}
    assert saved["config"]["neg_groups"] == 100  # what was asked stays recorded as asked
    assert "neglabel: neg_groups 5 ran, not the 100 asked (negatives 5, mined 5)" in saved["notes"]


def test_a_missing_split_and_a_skipped_set_are_loud(tmp_path, capsys, monkeypatch):
    """--ood-split naming a split the set lacks is an error; a default set that is missing is skipped, recorded in
    results.json and marked in the tables, and the average says it covers fewer sets."""
    message = _fails(tmp_path, capsys, "--in", "digits", "--ood-split", "digits_ood=val")
    assert "--ood-split digits_ood=val: digits_ood has no 'val' split (it has: train, test)" in message
    partners = ("isun", "digits_ood", "faces")
    monkeypatch.setitem(DATASETS, "digits", dataclasses.replace(DATASETS["digits"], ood=partners))
    summary = run(tmp_path, "--in", "digits", "--data-root", str(tmp_path / "data"), "--no-plots")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["skipped"]) == {"isun"} and set(summary["metrics"]["mcm"]) == {"digits_ood", "faces"}
    assert any(note.startswith("skipped default OOD set isun: dataset 'isun'") for note in saved["notes"])
    rows = {r["ood"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert rows["isun"]["AUROC"] == "" and rows["isun"]["note"].startswith("skipped: dataset 'isun' (test) is not")
    assert rows["average"]["note"] == "mean of 2 of the 3 sets"


def test_score_requirements_are_checked_before_any_ood_set_is_fetched(tmp_path, capsys):
    """k beyond the ID train split fails on k, not on the (missing) OOD folder that would be fetched after it."""
    message = _fails(tmp_path, capsys, "--in", "digits", "--score", "knn", "--k", "1000", "--out", "folder:/nowhere")
    assert "k=1000 needs at least k training images" in message


def test_a_setting_no_score_reads_is_noted(tmp_path, capsys):
    run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "mis", "knn", "--temperature", "2",
        "--gl-lambda", "0.5", "--no-plots")  # fmt: skip
    notes = json.loads((tmp_path / "out" / "results.json").read_text())["notes"]
    expected = "--temperature, --gl-lambda are read by none of the scores run (mis, knn): no effect"
    assert expected in notes and f"note: {expected}" in capsys.readouterr().out
    run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "mcm", "--temperature", "2", "--no-plots",
        out="read")  # fmt: skip
    assert not any("read by none" in n for n in json.loads((tmp_path / "read" / "results.json").read_text())["notes"])


def test_limit(tmp_path):
    summary = run(tmp_path, "--in", "digits", "--limit", "30", "--no-plots")
    assert summary["samples"] == {"ID": 30, "digits_ood": 30, "faces": 30, "skimage_textures": 30}


def test_missing_default_ood_set_is_skipped(tmp_path, monkeypatch, capsys):
    spec = dataclasses.replace(DATASETS["digits"], ood=("isun", "digits_ood"))
    monkeypatch.setitem(DATASETS, "digits", spec)
    summary = run(tmp_path, "--in", "digits", "--data-root", str(tmp_path / "data"), "--no-plots")
    assert list(summary["metrics"]["mcm"]) == ["digits_ood"]
    err = capsys.readouterr().err
    assert "skipping default OOD set isun" in err and "iSUN.tar.gz" in err


def _fails(tmp_path, capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        run(tmp_path, *argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # failed before any feature was extracted
    assert not (tmp_path / "out").exists()
    return err


def test_named_missing_ood_set_is_an_error_before_work(tmp_path, capsys):
    err = _fails(tmp_path, capsys, "--in", "digits", "--out", "isun", "--data-root", str(tmp_path / "d"))
    assert "iSUN.tar.gz" in err and "expected under --data-root" in err


def test_cifar10_offline_says_where_to_get_it(tmp_path, capsys):
    err = _fails(tmp_path, capsys, "--in", "cifar10", "--data-root", str(tmp_path / "d"), "--no-download")
    assert "cifar-10-python.tar.gz" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--in", "digits", "--score", "bogus"], "unknown score 'bogus'"),
        (["--in", "nowhere"], "unknown dataset 'nowhere'"),
        (["--in", "digits", "--out", "nowhere"], "unknown dataset 'nowhere'"),
        (["--in", "digits", "--temperature", "0"], "argument --temperature: must be a positive finite number"),
        (["--in", "digits", "--temperature", "nan"], "argument --temperature: must be a positive finite number"),
        (["--in", "digits", "--temperature", "inf"], "argument --temperature: must be a positive finite number"),
        (["--in", "digits", "--seed", "-1"], "argument --seed: must be between 0"),
        (["--in", "digits", "--batch-size", "99999999999999999999"], "argument --batch-size: must be between 1"),
        (["--in", "folder:"], "needs a path"),
        (["--in", "digits", "--bootstrap", "-1"], "argument --bootstrap: must be between 0 and"),
        (["--in", "digits", "--bootstrap", "1"], "must be 0 (no intervals) or at least 1000, so that each end"),
        (["--in", "digits", "--out", "digits"], "OOD set digits is the ID set digits: its images would be scored"),
        (["--in", "digits", "--shifted-id", "digits_ood", "--out", "digits_ood"], "OOD set digits_ood is the ID set"),
        (["--in", "imagenet100", "--out", "imagenet100_mcm"], "holds images from the same source (imagenet100)"),
        (["--in", "digits", "--classnames", "a,b,a,c,d"], "--classnames names 'a' more than once"),
        (["--in", "digits", "--classnames", "names.txt"], "--classnames names.txt: no such file"),
        (["--in", "digits", "--templates", "missing.txt"], "neither a known set"),
        (["--in", "cifar10", "--model", "ViT-Nope"], "--list-models"),  # before any download is tried
        (["--in", "digits", "--model", "timm:test_vit", "--score", "MCM"], "needs a text encoder"),
        (["--in", "digits", "--model", "timm:no_such_net", "--score", "knn"], "unknown timm model"),
        (["--in", "digits", "--score", "knn", "--k", "100000"], "at least k"),
        (["--in", "digits", "--out", "isun", "--score", "knn"], "iSUN"),
        (["--in", "digits", "--score", "neglabel", "--neg-words", "nowhere.txt"], "word list not found"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, capsys, argv, expected):
    assert "error: " in assert_one_clear_error(lambda: run(tmp_path, *argv), capsys, expected, tmp_path / "out")


@pytest.mark.parametrize("template", ["a {} of {}", "a photo of a {name}.", "a {0} and {1}", "stray } brace {}"])
def test_bad_template_file(tmp_path, capsys, template):
    path = tmp_path / "t.txt"
    path.write_text(template + "\n")
    assert "exactly one '{}'" in _fails(tmp_path, capsys, "--in", "digits", "--templates", str(path))


def test_template_file_not_utf8(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a photo of a {}\xff\xfe.\n")
    assert "not UTF-8" in _fails(tmp_path, capsys, "--in", "digits", "--templates", str(path))


@pytest.mark.parametrize("flag", ["--out-dir", "--cache-dir"])
def test_unwritable_folders_fail_before_work(tmp_path, capsys, flag):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    argv = [*TINY, "--in", "digits", "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    argv[argv.index(flag) + 1] = str(blocker / "sub")
    with pytest.raises(SystemExit):
        eval_ood_detection.main(argv)
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}") and "Traceback" not in err


def test_folder_without_train_split_for_fitted_scores(tmp_path, image_tree, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path, "--in", f"folder:{image_tree}", "--out", "digits_ood", "--score", "maha")
    assert "no 'train' split" in capsys.readouterr().err


def test_existing_results_are_not_overwritten(tmp_path):
    run(tmp_path, "--in", "digits", "--limit", "20", "--no-plots")
    first = (tmp_path / "out" / "results.json").read_text()
    run(tmp_path, "--in", "digits", "--limit", "25", "--no-plots")
    assert (tmp_path / "out" / "results.json").read_text() == first
    assert json.loads((tmp_path / "out-1" / "results.json").read_text())["samples"]["ID"] == 25
    run(tmp_path, "--in", "digits", "--limit", "25", "--no-plots", "--overwrite")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["samples"]["ID"] == 25


def test_list_datasets(capsys):
    with pytest.raises(SystemExit) as info:
        eval_ood_detection.main(["--list-datasets"])
    assert info.value.code == 0
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == list(DATASETS)


def test_list_models(capsys):
    with pytest.raises(SystemExit) as info:
        eval_ood_detection.main(["--list-models"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "tiny:" in out and "ViT-B-16: openai" in out and "timm:NAME" in out


def test_torchrun_extraction_matches_one_process(tmp_path):
    """Two ranks (gloo, CPU) each encode a shard of every dataset; rank 0 assembles caches identical to one
    process's, bit for bit, and reports the same metrics."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        "eval_ood_detection.py",
        "--in",
        "digits",
        *TINY,
        "--score",
        "mcm",
        "knn",
        "--limit",
        "150",
        "--batch-size",
        "32",
        "--no-plots",
        "--device",
        "cpu",
    ]  # fmt: skip  (two ranks: CPU even beside a GPU)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2", "--standalone"]
    runs = {"one": [sys.executable], "two": torchrun}
    for name, launcher in runs.items():
        cmd = [
            *launcher,
            *args,
            "--cache-dir",
            str(tmp_path / name / "cache"),
            "--out-dir",
            str(tmp_path / name / "out"),
        ]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    entries = {name: sorted(p.name for p in (tmp_path / name / "cache").iterdir() if not p.name.startswith("."))
               for name in runs}  # fmt: skip
    assert entries["one"] == entries["two"] and len(entries["one"]) == 5  # train, test and 3 OOD sets
    for key in entries["one"]:
        for array in ("features.npy", "labels.npy", "index.npy"):
            one, two = (np.load(tmp_path / name / "cache" / key / array) for name in runs)
            assert np.array_equal(one, two), (key, array)
    metrics = [json.loads((tmp_path / name / "out" / "results.json").read_text())["metrics"] for name in runs]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_is_well_formed(name):
    """Each setting is an argument of the script, each published row a score of the preset on one of its sets; every
    setting its scores read is fixed by the preset, or marks a run that changes it not comparable."""
    from utils.evaluation.inputs import settings_read
    from utils.evaluation.presets import NOT_COMPARABLE_WHEN_SET, USER_FILES, load_preset
    from utils.scores import canonical

    preset = load_preset(name)
    dests = {a.dest for a in eval_ood_detection.build_parser()._actions}
    assert set(preset.settings) <= dests and set(preset.defaults) <= dests
    read = {s.name for score in preset.settings["score"] for s in settings_read(canonical(score))}
    assert read <= {*preset.settings, *NOT_COMPARABLE_WHEN_SET, *USER_FILES}
    assert preset.paper and preset.source
    for score, per_set in preset.published.items():
        assert score in preset.settings["score"]
        assert set(per_set) <= {*preset.settings["out"], "average", *DATASETS[preset.settings["id_name"]].ood_groups}
        for values in per_set.values():  # every published metric is one the run computes
            assert set(values) <= {*METRICS, *preset.settings.get("extra_metrics", [])}
    for name in [preset.settings["id_name"], *preset.settings["out"]]:
        assert name in DATASETS


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_follows_its_papers_pipeline(name):
    """Every official code decodes and resizes with PIL; each preset fixes the precision its code ran in and stores
    features at least as precise (fp32 arithmetic: float32 features); OpenOOD's FPR column is OpenOOD's reading."""
    from utils.evaluation.presets import load_preset

    settings = load_preset(name).settings
    assert settings["pipeline"] == "pil"
    assert settings.get("precision") in {"fp32", "fp16"}
    if settings["precision"] == "fp32" or name == "neglabel-imagenet":  # NegLabel: float32 features, as its note says
        assert settings.get("feature_dtype") == "float32"
    if name.startswith("openood-"):
        assert "FPR95_OPENOOD" in settings["extra_metrics"]
        published = {m for per_set in load_preset(name).published.values() for v in per_set.values() for m in v}
        assert "FPR95_OOD" not in published


def test_neg_groups_help_says_what_one_group_computes(capsys):
    """--neg-groups 1 is the paper's one softmax; the release's ngroup = 1 branch computes something else."""
    with pytest.raises(SystemExit):
        eval_ood_detection.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "1 = the paper's one softmax over the ID labels and all negatives (the release's ngroup = 1 branch " \
           "scores the sum of the ID logits instead" in help_text  # fmt: skip


def test_preset_runs_offline_and_shows_published_numbers(tmp_path, imagenet_benchmark, capsys):
    out = run(tmp_path, "--preset", "mcm-imagenet", "--data-root", str(imagenet_benchmark), "--no-plots")
    assert set(out["metrics"]) == {"mcm"} and set(out["metrics"]["mcm"]) == {"inaturalist", "sun", "places", "textures"}
    printed = capsys.readouterr().out
    assert (
        "published numbers (Table 1, ImageNet-1k, CLIP ViT-B/16, zero-shot) are not comparable: model tiny" in printed
    )
    rows = {r["ood"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert (
        float(rows["inaturalist"]["AUROC_published"]) == 94.61
        and float(rows["average"]["FPR95_MCM_published"]) == 42.74
    )
    assert float(rows["sun"]["AUROC_diff"]) == pytest.approx(float(rows["sun"]["AUROC"]) - 92.57, abs=0.011)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["preset"]["name"] == "mcm-imagenet" and saved["preset"]["comparable"] is False
    config = saved["config"]
    assert (config["templates"], config["interpolation"], config["id_name"]) == ("mcm", "bilinear", "imagenet")
    assert (config["model"], config["pretrained"]) == ("tiny", "none")  # the model is the user's to choose


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--in", "digits"], "--preset mcm-imagenet sets --in imagenet; it conflicts with --in digits given here"),
     (["--templates", "single"], "sets --templates mcm; it conflicts with --templates single"),
     (["--score", "knn"], "sets --score mcm; it conflicts with --score knn")],
)  # fmt: skip
def test_preset_refuses_conflicting_flags(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, "--preset", "mcm-imagenet", *extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_list_presets(capsys):
    with pytest.raises(SystemExit):
        eval_ood_detection.main(["--list-presets"])
    printed = capsys.readouterr().out
    assert "mcm-imagenet " in printed and "neglabel-imagenet" in printed and "knn-cifar10-clip" in printed
    with pytest.raises(SystemExit):
        eval_ood_detection.main(["--preset", "nope"])
    assert (
        "unknown preset 'nope'; known: adaneg-imagenet, csp-imagenet, eoe-imagenet, glmcm-imagenet"
        in capsys.readouterr().err
    )


def test_mcm_imagenet20_preset_reads_imagenet10s_train_split(tmp_path):
    """MCM's ImageNet-20 numbers score ImageNet-10 (the horse list) train images as OOD: more images than val."""
    from utils.data import classnames

    root = tmp_path / "data"
    for k, wnid in enumerate(classnames.IMAGENET20):
        write_images(root / "imagenet20" / "val" / wnid, 1, seed=k, size=8)
    for k, wnid in enumerate(classnames.IMAGENET10_MCM):
        write_images(root / "imagenet10_mcm" / "train" / wnid, 3, seed=50 + k, size=8)
        write_images(root / "imagenet10_mcm" / "val" / wnid, 1, seed=80 + k, size=8)
    out = run(tmp_path, "--preset", "mcm-imagenet20", "--data-root", str(root), "--no-plots")
    assert out["samples"] == {"ID": 20, "imagenet10_mcm": 30}


def test_neglabel_preset_runs_offline(tmp_path, imagenet_benchmark, words, capsys):
    """The released NegLabel through the command line: per-POS mining, grouping, published columns (not comparable:
    another model and word pool)."""
    out = run(tmp_path, "--preset", "neglabel-imagenet", "--data-root", str(imagenet_benchmark),
              "--neg-words", str(words), "--no-plots")  # fmt: skip
    assert set(out["metrics"]["neglabel"]) == {"inaturalist", "sun", "places", "textures"}
    printed = capsys.readouterr()
    assert "not comparable: model tiny (published: ViT-B-16); pretrained none (published: openai); another word " \
           "pool (--neg-words)" in printed.out  # fmt: skip
    assert "preset neglabel-imagenet: the 100 groups come from numpy's seeded permutation" in printed.err
    mined = (tmp_path / "out" / "neglabel_words.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in mined] == ["noun"] * 3 + ["adj"] * 2
    rows = {r["ood"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert float(rows["average"]["AUROC_published"]) == 94.21 and "FPR95_MCM" in rows["textures"]


def test_gl_mcm_end_to_end_on_patch_tokens(tmp_path, capsys):
    """l_mcm and gl_mcm on the tiny ViT's patch tokens: the local view is extracted for the test sets only (its size
    said first), and gl_mcm = mcm + λ · l_mcm image by image."""
    out = run(tmp_path, "--in", "digits", "--out", "digits_ood", "--score", "mcm", "l_mcm", "gl_mcm", "--gl-lambda",
              "0.5", "--no-plots")  # fmt: skip
    assert set(out["metrics"]) == {"mcm", "l_mcm", "gl_mcm"}
    err = capsys.readouterr().err
    assert "local features of digits/test: 271 images x 65 tokens x 64 = " in err
    assert "local features of digits/train" not in err
    scores = np.load(tmp_path / "out" / "scores.npz")
    for part in ("id", "ood"):
        from utils.scores.zero_shot import MCM  # mcm and l_mcm rank by log-odds: their probabilities added here

        combined = MCM.plain(scores[f"mcm/digits_ood/{part}"]) + 0.5 * MCM.plain(scores[f"l_mcm/digits_ood/{part}"])
        assert np.allclose(scores[f"gl_mcm/digits_ood/{part}"], combined, atol=2e-3)  # float16 cache of both views


def test_glmcm_preset_runs_offline(tmp_path, imagenet_benchmark):
    out = run(tmp_path, "--preset", "glmcm-imagenet", "--data-root", str(imagenet_benchmark), "--no-plots")
    assert set(out["metrics"]["gl_mcm"]) == {"inaturalist", "sun", "places", "textures"}
    rows = {r["ood"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert float(rows["average"]["AUROC_published"]) == 91.51 and "FPR95_MCM_diff" in rows["inaturalist"]
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert (config["gl_lambda"], config["templates"], config["precision"]) == (0.5, "mcm", "fp16")


def test_classnames_name_the_id_classes_without_touching_the_images(tmp_path, capsys, monkeypatch):
    import utils.evaluation.pipeline as pipeline

    names = tmp_path / "names.txt"
    names.write_text("nought\nuno\ndeux\ndrei\nquattro\n")
    seen = []
    original = pipeline.text_embeddings
    monkeypatch.setattr(pipeline, "text_embeddings", lambda b, n, *a, **k: seen.append(list(n)) or original(b, n, *a))
    base = run(tmp_path, "--in", "digits", "--score", "mcm", "--limit", "40", "--no-plots", out="a")
    renamed = run(tmp_path, "--in", "digits", "--score", "mcm", "--limit", "40", "--no-plots", "--classnames",
                  str(names), out="b")  # fmt: skip
    assert seen[-1] == ["nought", "uno", "deux", "drei", "quattro"] and seen[0][0] == "digit zero"
    assert renamed["metrics"]["mcm"] != base["metrics"]["mcm"]  # other prompts, the same cached images
    with pytest.raises(SystemExit):
        run(tmp_path, "--in", "digits", "--score", "mcm", "--limit", "40", "--classnames", "a,b", out="c")
    assert "--classnames gives 2 names but digits has 5 classes" in capsys.readouterr().err

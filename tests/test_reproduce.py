"""`python -m tools.reproduce` / `make reproduce`: every preset whose data is here, one table beside the published
numbers; and tools/neglabel_words.py, the release's word lists as a --neg-words file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import utils.features.images
from tools import neglabel_words, reproduce
from utils.data.words import is_release_pool, load_words
from utils.evaluation.presets import comparable, list_presets, load_preset

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny", "--pretrained", "none", "--workers", "0"]


def test_an_empty_data_root_skips_every_preset_with_its_reason_and_writes_the_table(tmp_path):
    """Offline, nothing on disk: every preset is skipped saying what is missing and where to get it (the default
    model's weights are never asked for: the data is checked first), and the three files are written."""
    out = tmp_path / "reproduction"
    report = reproduce.main(["--data-root", str(tmp_path / "empty"), "--out-dir", str(out), "--cache-dir",
                             str(tmp_path / "cache")])  # fmt: skip
    assert list(report) == list_presets()
    assert {r["status"] for r in report.values()} == {"skipped"}
    assert all("get it from:" in r["reason"] and "is not available under" in r["reason"] for r in report.values())
    saved = json.loads((out / "reproduction.json").read_text())
    assert saved["presets"]["mcm-imagenet"]["status"] == "skipped"
    table = (out / "reproduction.md").read_text()
    assert f"{len(list_presets())} presets: 0 ran" in table and "| mcm-cub200 | MCM: Ming et al." in table
    assert "skipped: dataset 'cub200' (test) is not available" in table
    assert (out / "reproduction.png").stat().st_size > 0


def test_presets_with_their_data_run_in_one_process_and_resume_from_the_cache(
    tmp_path, imagenet_benchmark, monkeypatch
):
    """Two ImageNet presets run on a fake tree (the tiny model: not comparable, said why), the CIFAR one is skipped;
    a second reproduction encodes nothing: it resumes from the shared feature cache."""
    argv = ["--preset", "mcm-imagenet", "glmcm-imagenet", "knn-cifar10-clip", "--data-root", str(imagenet_benchmark),
            "--out-dir", str(tmp_path / "rep"), "--cache-dir", str(tmp_path / "cache"), *TINY]  # fmt: skip
    report = reproduce.main(argv)
    assert [r["status"] for r in report.values()] == ["ran", "ran", "skipped"]
    mcm = report["mcm-imagenet"]
    assert mcm["comparable"] is False and mcm["reason"].startswith("model tiny (published: ViT-B-16)")
    row = next(r for r in mcm["rows"] if (r["score"], r["ood"], r["metric"]) == ("mcm", "inaturalist", "AUROC"))
    assert row["published"] == 94.61 and row["diff"] == pytest.approx(row["ours"] - 94.61, abs=0.011)
    assert {r["metric"] for r in mcm["rows"]} == {"AUROC", "FPR95_MCM"}  # the metrics the paper publishes
    assert (tmp_path / "rep" / "mcm-imagenet" / "results.json").is_file()
    table = (tmp_path / "rep" / "reproduction.md").read_text()
    assert "3 presets: 2 ran (0 comparable" in table and "## glmcm-imagenet" in table
    assert f"| mcm | inaturalist | AUROC | {row['ours']:.2f} | 94.61 |" in table

    calls = []
    original = utils.features.images.extract
    monkeypatch.setattr(utils.features.images, "extract", lambda *a, **k: calls.append(a) or original(*a, **k))
    again = reproduce.main(argv)
    assert calls == [] and again["mcm-imagenet"]["rows"] == mcm["rows"]


def test_a_preset_whose_user_file_is_missing_is_skipped_saying_so(tmp_path, imagenet_benchmark):
    """EOE's preset needs envisioned names only the user has: with the data there but no --eoe-names, it is skipped
    (not failed), before anything is encoded."""
    report = reproduce.main(["--preset", "eoe-imagenet", "--data-root", str(imagenet_benchmark), "--out-dir",
                             str(tmp_path / "rep"), "--cache-dir", str(tmp_path / "cache"), *TINY])  # fmt: skip
    assert report["eoe-imagenet"]["status"] == "skipped"
    assert report["eoe-imagenet"]["reason"].startswith("eoe needs --eoe-names FILE")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("features.npy"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--in", "digits"], "--in: fixed by preset mcm-imagenet"),
     (["--overwrite"], "--overwrite: set by this tool's own flags"),
     (["--bogus", "1"], "eval_ood_detection.py does not know --bogus 1")],
)  # fmt: skip
def test_flags_that_cannot_pass_to_every_preset_are_refused_before_any_run(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        reproduce.main(["--preset", "mcm-imagenet", "--out-dir", str(tmp_path / "rep"), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_a_preset_that_fails_is_reported_and_the_exit_status_says_so(tmp_path, imagenet_benchmark, capsys):
    """A run refused for a reason other than missing data is a failure (exit 1), not a skip; the table is written."""
    with pytest.raises(SystemExit) as info:
        reproduce.main(["--preset", "mcm-imagenet", "--data-root", str(imagenet_benchmark), "--out-dir",
                        str(tmp_path / "rep"), "--select-holdout", "0.2", *TINY])  # fmt: skip
    assert info.value.code == 1
    saved = json.loads((tmp_path / "rep" / "reproduction.json").read_text())["presets"]["mcm-imagenet"]
    assert saved["status"] == "failed" and "--select-holdout only applies with --select" in saved["reason"]
    assert "mcm-imagenet failed" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reproduce_runs_offline(tmp_path):
    args = f"--data-root {tmp_path / 'empty'} --out-dir {tmp_path / 'rep'} --cache-dir {tmp_path / 'cache'}"
    done = subprocess.run(["make", "reproduce", f"PYTHON={sys.executable}", f"ARGS={args}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "presets: 0 ran" in (tmp_path / "rep" / "reproduction.md").read_text()


@pytest.fixture
def txtfiles(tmp_path: Path) -> Path:
    """The release's layout: adjective and noun files named by part of speech; "red" is in one of each."""
    folder = tmp_path / "txtfiles"
    folder.mkdir()
    (folder / "adj.all").write_text("good\nred\n[odd\n")
    (folder / "noun.animal.txt").write_text("cat\nred\n")
    (folder / "noun.food.txt").write_text("apple\n\n cat \n")
    return folder


def test_release_words_take_the_part_of_speech_of_their_first_file(txtfiles, tmp_path, monkeypatch):
    in_order = neglabel_words.release_words(txtfiles, "sorted")
    assert in_order == [("good", "adj"), ("red", "adj"), ("[odd", "adj"), ("cat", "noun"), ("apple", "noun")]
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: sorted(real(path), reverse=True))  # as a filesystem may list them
    nouns_first = neglabel_words.release_words(txtfiles, "listdir")  # noun.food, noun.animal, adj.all
    assert nouns_first == [("apple", "noun"), ("cat", "noun"), ("red", "noun"), ("good", "adj"), ("[odd", "adj")]


def test_converted_release_pool_loads_as_written_and_counts_as_the_papers_pool(txtfiles, tmp_path):
    out = tmp_path / "release.tsv"
    neglabel_words.main([str(txtfiles), str(out), "--order", "sorted"])
    assert load_words(out) == neglabel_words.release_words(txtfiles, "sorted")
    assert is_release_pool(out) and "files in sorted order; 2 nouns, 3 adjs" in out.read_text().splitlines()[0]
    preset = load_preset("neglabel-imagenet")
    values = {**preset.defaults, "neg_words": str(out)}
    assert comparable(preset, values) is None
    plain = tmp_path / "plain.txt"
    plain.write_text("cat\ngood\tadj\n")
    assert comparable(preset, {**values, "neg_words": str(plain)}) == "another word pool (--neg-words)"


def test_a_folder_that_is_not_the_releases_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "words").mkdir()
    (tmp_path / "words" / "verbs.txt").write_text("run\n")
    with pytest.raises(SystemExit) as info:
        neglabel_words.main([str(tmp_path / "words"), str(tmp_path / "out.tsv")])
    assert info.value.code == 2 and "is not NegLabel's txtfiles/ folder" in capsys.readouterr().err
    assert not (tmp_path / "out.tsv").exists()


def test_csp_release_words_leave_out_its_files_and_conjugate_in_file_order(txtfiles, tmp_path):
    import random

    from utils.data.words import CSP_SUPERCLASSES

    (txtfiles / "adj.pert").write_text("solar\n")
    (txtfiles / "noun.person.txt").write_text("baker\n")
    words = neglabel_words.release_words(txtfiles, "sorted", csp=True)
    random.seed(0)
    drawn = [random.choice([f"{{}} {s}" for s in CSP_SUPERCLASSES]).format(a) for a in ("good", "red", "[odd")]
    assert words == [*((label, "adj") for label in drawn), ("cat", "noun"), ("apple", "noun")]
    out = tmp_path / "csp.tsv"
    neglabel_words.main([str(txtfiles), str(out), "--order", "sorted", "--csp"])
    assert is_release_pool(out, "csp") and not is_release_pool(out, "neglabel")
    preset = load_preset("csp-imagenet")
    assert comparable(preset, {**preset.defaults, "csp_words": str(out)}) is None
    assert comparable(preset, {**preset.defaults, "csp_words": str(txtfiles / "adj.all")}) == \
        "another word pool (--csp-words)"  # fmt: skip


def test_negrefine_release_lists_become_one_file_nouns_first(tmp_path):
    seed = tmp_path / "seed_0"
    seed.mkdir()
    (seed / "neg_labels_noun.txt").write_text("tractor\nfog\n")
    (seed / "neg_labels_adj.txt").write_text("gooey landscape\n")
    out = tmp_path / "negrefine.tsv"
    neglabel_words.main(["--negrefine", str(seed), str(out)])
    assert load_words(out) == [("tractor", "noun"), ("fog", "noun"), ("gooey landscape", "adj")]
    preset = load_preset("negrefine-imagenet")
    assert comparable(preset, {**preset.defaults, "negrefine_words": str(out)}) is None
    (seed / "neg_labels_adj.txt").unlink()
    with pytest.raises(SystemExit):
        neglabel_words.main(["--negrefine", str(seed), str(tmp_path / "other.tsv")])


def test_adaneg_release_words_keep_a_word_of_both_parts_as_a_noun(txtfiles, tmp_path):
    out = tmp_path / "adaneg.tsv"
    neglabel_words.main([str(txtfiles), str(out), "--adaneg"])
    assert load_words(out) == [("cat", "noun"), ("red", "noun"), ("apple", "noun"), ("good", "adj"), ("[odd", "adj")]
    preset = load_preset("adaneg-imagenet")
    assert comparable(preset, {**preset.defaults, "neg_words": str(out)}) is None
    neglabels = tmp_path / "neglabel.tsv"
    neglabel_words.main([str(txtfiles), str(neglabels), "--order", "sorted"])  # NegLabel's reading: not AdaNeg's
    assert comparable(preset, {**preset.defaults, "neg_words": str(neglabels)}) == "another word pool (--neg-words)"

"""The tools: the offline digits experiment (`make demo`) reaches its thresholds; README's layout is the tree's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_reaches_its_thresholds(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(["make", "demo", f"OUT={out}", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zero_shot_top1"] >= 0.90
    assert summary["ood"]["mcm"]["digits_ood"]["AUROC"] >= 0.85
    assert set(summary["ood"]["mcm"]) == {"digits_ood", "faces", "skimage_textures"}
    assert len(summary["training"]) == 30 and summary["linear_probe_top1"] >= 0.90


def test_an_editable_install_works_from_any_folder(tmp_path):
    """`pip install -e .` builds (pyproject.toml), and its scripts and utils import from another folder and find
    the checkout's configs/ and shipped data."""
    # the build backend of requirements-dev.txt (setuptools >= 70.1), used in place, as offline tests must
    prefix = tmp_path / "prefix"
    install = ["install", "--quiet", "--no-deps", "--no-build-isolation", "--prefix", str(prefix), "-e", str(ROOT)]
    done = subprocess.run([sys.executable, "-m", "pip", *install], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = next(prefix.glob("lib/python*/site-packages"))
    check = ("import site, sys; site.addsitedir(sys.argv[1]); import eval_ood_detection, utils; "
             "from utils.data.words import WORDNET_POOL; print(utils.__file__, WORDNET_POOL.is_file()); "
             "eval_ood_detection.main(['--list-presets'])")  # fmt: skip
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout is reachable only through it
    done = subprocess.run([sys.executable, "-c", check, str(site)], cwd=away, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{ROOT / 'utils' / '__init__.py'} True" in done.stdout and "mcm-imagenet" in done.stdout


def test_readme_layout_is_generated_from_the_tree():
    from tools.layout import layout, readme_section

    current = readme_section((ROOT / "README.md").read_text(encoding="utf-8"))
    assert current == layout(), "README's code layout is stale: run python -m tools.layout --write"


def test_layout_lists_every_module():
    from tools.layout import layout

    text = layout()
    for path in [*ROOT.glob("*.py"), *(ROOT / "utils").rglob("*.py"), *(ROOT / "tools").glob("*.py")]:
        if path.name != "__init__.py":
            assert f" {path.name} " in f" {text} ".replace("\n", " "), path


def test_wordnet_pool_follows_the_released_recipe(tmp_path):
    """Head lemma of each synset, '_' as a space, lowercase, markers stripped; noun.animal and noun.food left out;
    a word that is both parts of speech is an adjective."""
    from tools import wordnet_pool

    (tmp_path / "lexnames").write_text("00\tadj.all\t3\n03\tnoun.Tops\t1\n05\tnoun.animal\t1\n06\tnoun.artifact\t1\n"
                                       "13\tnoun.food\t1\n")  # fmt: skip
    licence = "  1 This software and database is being provided to you\n"
    (tmp_path / "data.noun").write_text(licence + "00000001 03 n 01 Entity 0 000 | x\n"
        "00000002 06 n 02 ice_cream_maker 0 freezer 0 000 | x\n00000003 05 n 01 dog 0 000 | x\n"
        "00000004 13 n 01 bread 0 000 | x\n00000005 06 n 01 handy 0 000 | x\n")  # fmt: skip
    (tmp_path / "data.adj").write_text(licence + "00000010 00 a 01 able 0 000 | x\n"
                                       "00000011 00 s 02 handy 0 ready_to_hand(p) 0 000 | x\n"
                                       "00000012 00 a 01 ablaze(p) 0 000 | x\n")  # fmt: skip
    pool = wordnet_pool.build_pool(tmp_path, tmp_path / "lexnames")
    assert pool == [("able", "adj"), ("handy", "adj"), ("ablaze", "adj"), ("entity", "noun"),
                    ("ice cream maker", "noun")]  # fmt: skip
    out = tmp_path / "pool.tsv.gz"
    wordnet_pool.main(["--dict", str(tmp_path), "--out", str(out), "--source", "test files"])
    from utils.data.words import load_words

    assert load_words(out) == pool


def test_csp_pool_leaves_out_its_files_and_conjugates_the_adjectives_in_order(tmp_path):
    """CSP's recipe on top of NegLabel's: noun.person, noun.quantity, noun.group and adj.pert left out; each adjective,
    in the pool's order, "<adjective> <superclass>" with the superclasses Python's random(0) draws, as released."""
    import random

    from tools import wordnet_pool
    from utils.data.words import CSP_SUPERCLASSES, load_words

    (tmp_path / "lexnames").write_text("00\tadj.all\t3\n01\tadj.pert\t3\n06\tnoun.artifact\t1\n"
                                       "18\tnoun.person\t1\n14\tnoun.group\t1\n")  # fmt: skip
    (tmp_path / "data.noun").write_text("00000002 06 n 01 hammer 0 000 | x\n00000003 18 n 01 baker 0 000 | x\n"
                                        "00000004 14 n 01 team 0 000 | x\n")  # fmt: skip
    (tmp_path / "data.adj").write_text("00000010 00 a 01 able 0 000 | x\n00000011 01 a 01 solar 0 000 | x\n"
                                       "00000012 00 a 01 lively 0 000 | x\n")  # fmt: skip
    pool = wordnet_pool.build_csp_pool(tmp_path, tmp_path / "lexnames")
    random.seed(0)  # the release's draw: random.choice(csp_templates) per adjective
    drawn = [random.choice([f"{{}} {s}" for s in CSP_SUPERCLASSES]).format(a) for a in ("able", "lively")]
    assert pool == [(drawn[0], "adj"), (drawn[1], "adj"), ("hammer", "noun")]
    out = tmp_path / "csp.tsv.gz"
    wordnet_pool.main(["--csp", "--dict", str(tmp_path), "--out", str(out), "--source", "test files"])
    assert load_words(out) == pool


def test_shipped_csp_pool_is_what_its_header_says():
    import gzip

    from utils.data.words import CSP_POOL, CSP_SUPERCLASSES, load_words

    pool = load_words(CSP_POOL)
    with gzip.open(CSP_POOL, "rt") as handle:
        header = "".join(line for line in handle if line.startswith("#"))
    nouns, labels = [w for w, p in pool if p == "noun"], [w for w, p in pool if p == "adj"]
    assert f"{len(nouns)} nouns, {len(labels)} CSP labels" in header and len(pool) > 55_000
    assert all(label.rsplit(" ", 1)[1] in CSP_SUPERCLASSES for label in labels)
    assert not {"surgeon", "committee", "kilogram"} & set(nouns)  # noun.person, noun.group, noun.quantity left out
    neglabel = load_words()  # CSP's nouns are NegLabel's words from fewer files (adj.pert's now count as nouns)
    assert set(nouns) < {w for w, _ in neglabel} and "ritual" in nouns and ("ritual", "adj") in neglabel


def test_shipped_pool_is_what_its_header_says():
    import gzip

    from utils.data.words import WORDNET_POOL, load_words

    pool = load_words()
    with gzip.open(WORDNET_POOL, "rt") as handle:
        header = [line for line in handle if line.startswith("#")]
    nouns, adjectives = [w for w, p in pool if p == "noun"], [w for w, p in pool if p == "adj"]
    assert f"{len(nouns)} nouns, {len(adjectives)} adjectives" in "".join(header)
    assert len(pool) == len({w for w, _ in pool}) > 70_000
    assert sum(" " in w for w in nouns) > 20_000  # multi-word lemmas, as in the release
    assert {"ice hockey", "power drill", "entity"} <= set(nouns)
    assert not {"golden retriever", "brambling", "baguette"} & set(nouns)  # noun.animal, noun.food left out
    assert all(w == w.lower() and "_" not in w for w, _ in pool)

"""make_imagenet10.py on a fake ImageNet tree."""

from __future__ import annotations

import csv
import json
import os

import pytest
from PIL import Image

import make_imagenet10
from utils.data import classnames
from utils.data.splits import load_dataset

DISTRACTORS = ["n01440764", "n01443537"]


def _fake_imagenet(root, wnids, per_class=2, flat_val=False):
    for split in ("train", "val"):
        for wnid in wnids:
            for k in range(per_class):
                folder = root / split if (split == "val" and flat_val) else root / split / wnid
                folder.mkdir(parents=True, exist_ok=True)
                name = f"ILSVRC2012_val_{wnid}_{k}" if split == "val" else f"{wnid}_{k}"
                Image.new("RGB", (12, 12), (k * 40, 10, 200)).save(folder / f"{name}.JPEG")
    if flat_val:
        rows = [{"ImageId": f"ILSVRC2012_val_{w}_{k}", "PredictionString": f"{w} 1 2 3 4"}
                for w in wnids for k in range(per_class)]  # fmt: skip
        with open(root / "LOC_val_solution.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["ImageId", "PredictionString"])
            writer.writeheader()
            writer.writerows(rows)
    return root


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def source(tmp_path):
    return _fake_imagenet(tmp_path / "imagenet", [*classnames.IMAGENET10, *classnames.IMAGENET10_MCM, *DISTRACTORS])


def test_builds_imagenet10_with_links_manifest_and_captions(tmp_path, source):
    before = _snapshot(source)
    out = tmp_path / "data" / "imagenet10"
    result = make_imagenet10.main(["--imagenet-root", str(source), "--out", str(out), "--captions-per-image", "2"])
    assert result["made"] == 40 and result["classes"] == 10
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(classnames.IMAGENET10)
    link = next((out / "train" / "n04552348").iterdir())
    assert link.is_symlink() and os.readlink(link) == str((source / "train" / "n04552348" / link.name).resolve())
    manifest = list(csv.DictReader((out / "manifest.csv").open()))
    assert {r["wnid"]: r["class_name"] for r in manifest} == classnames.IMAGENET10
    assert all(r["train_images"] == "2" and r["val_images"] == "2" for r in manifest)
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(records) == 20 and all(len(r["captions"]) == 2 for r in records)
    assert all(classnames.IMAGENET10[r["wnid"]] in c for r in records for c in r["captions"])
    assert _snapshot(source) == before  # the source is untouched
    data = load_dataset("imagenet10", "test", root=tmp_path / "data")  # the registry reads what it wrote
    assert len(data.dataset) == 20 and len(data.classnames) == 10


def test_rerun_is_idempotent_and_finishes_what_is_missing(tmp_path, source):
    out = tmp_path / "imagenet10"
    argv = ["--imagenet-root", str(source), "--out", str(out)]
    make_imagenet10.main(argv)
    captions = (out / "captions.jsonl").read_text()
    victim = next((out / "val" / "n04285008").iterdir())
    victim.unlink()
    assert make_imagenet10.main(argv)["made"] == 1
    assert (out / "captions.jsonl").read_text() == captions  # same seed, same captions
    assert make_imagenet10.main(argv)["made"] == 0


def test_mcm_variant_and_copies(tmp_path, source):
    out = tmp_path / "imagenet10_mcm"
    make_imagenet10.main(["--imagenet-root", str(source), "--out", str(out), "--variant", "mcm", "--copy"])
    wnids = sorted(p.name for p in (out / "train").iterdir())
    assert "n02389026" in wnids and "n01728572" not in wnids
    image = next((out / "train" / "n02389026").iterdir())
    assert image.is_file() and not image.is_symlink()


def test_flat_official_val_with_kaggle_labels(tmp_path):
    source = _fake_imagenet(tmp_path / "imagenet", list(classnames.IMAGENET10), flat_val=True)
    out = tmp_path / "imagenet10"
    result = make_imagenet10.main(["--imagenet-root", str(source), "--out", str(out)])
    assert all(count == 2 for count in result["counts"]["val"].values())


def test_flat_val_without_labels_says_how_to_fix(tmp_path, capsys):
    source = _fake_imagenet(tmp_path / "imagenet", list(classnames.IMAGENET10), flat_val=True)
    (source / "LOC_val_solution.csv").unlink()
    with pytest.raises(SystemExit):
        make_imagenet10.main(["--imagenet-root", str(source), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "--val-labels" in err and "val/<wnid>/" in err and not (tmp_path / "o").exists()


def test_missing_wnid_creates_nothing(tmp_path, capsys):
    wnids = [w for w in classnames.IMAGENET10 if w != "n01641577"]
    source = _fake_imagenet(tmp_path / "imagenet", wnids)
    with pytest.raises(SystemExit) as info:
        make_imagenet10.main(["--imagenet-root", str(source), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "n01641577" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_other_subsets_and_bad_inputs(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real_find_spec(n, *a)
    )
    source = _fake_imagenet(tmp_path / "imagenet", list(classnames.IMAGENET20), per_class=1)
    result = make_imagenet10.main(["--imagenet-root", str(source), "--out", str(tmp_path / "i20"), "--subset",
                                   "imagenet20"])  # fmt: skip
    assert result["classes"] == 20
    for argv, expected in [
        (["--subset", "imagenet20", "--variant", "mcm"], "no 'mcm' variant of imagenet20"),
        (["--captioner", "Salesforce/blip-image-captioning-base"], "pip install transformers"),
    ]:
        with pytest.raises(SystemExit):
            make_imagenet10.main(["--imagenet-root", str(source), "--out", str(tmp_path / "x"), *argv])
        assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_imagenet10.main(["--imagenet-root", str(source), "--out", str(source / "inside")])
    assert "never modified" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for argv, expected in [(["--out", str(blocker)], "not a folder"), (["--out", str(tmp_path / "y"), "--seed", "-1"],
                                                                       "argument --seed")]:  # fmt: skip
        with pytest.raises(SystemExit):
            make_imagenet10.main(["--imagenet-root", str(source), *argv])
        assert expected in capsys.readouterr().err


def test_bad_val_labels_file(tmp_path, capsys):
    source = _fake_imagenet(tmp_path / "imagenet", list(classnames.IMAGENET10), flat_val=True)
    (source / "LOC_val_solution.csv").write_text("Image,Label\nx,y\n")
    with pytest.raises(SystemExit):
        make_imagenet10.main(["--imagenet-root", str(source), "--out", str(tmp_path / "o")])
    assert "is not a LOC_val_solution.csv" in capsys.readouterr().err


def test_dangling_links_are_remade(tmp_path, source):
    out = tmp_path / "imagenet10"
    argv = ["--imagenet-root", str(source), "--out", str(out)]
    make_imagenet10.main(argv)
    link = next((out / "train" / "n04552348").iterdir())
    link.unlink()
    link.symlink_to(tmp_path / "gone.JPEG")
    assert make_imagenet10.main(argv)["made"] == 1 and link.exists()

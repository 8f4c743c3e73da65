"""Covariate shift: ImageNet-V2/-Sketch/-R/-A/-O on fake trees in their release layouts, and full-spectrum ID."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval_ood_detection
import play_with_clip
from tests.conftest import write_images
from tests.test_openood import TINY, _images, _write_list
from utils.data import classnames
from utils.data import openood as oo
from utils.data.full_spectrum import full_spectrum
from utils.data.splits import load_dataset
from utils.errors import UserError

WNIDS = sorted(classnames.imagenet1k())
R_WNIDS = [WNIDS[7], WNIDS[1], WNIDS[500]]  # written out of order: classes are the sorted folders


def fake_r(root, folder="imagenet-r", wnids=R_WNIDS, per_class=2):
    for k, wnid in enumerate(wnids):
        write_images(root / folder / wnid, per_class, seed=10 * k, size=12, suffix=".jpg")
    (root / folder / "README.txt").write_text("not an image")


def fake_v2(root, filled=(2, 10)):
    for index in range(1000):
        (root / "imagenetv2-matched-frequency-format-val" / str(index)).mkdir(parents=True)
    for index in filled:
        write_images(root / "imagenetv2-matched-frequency-format-val" / str(index), 1, seed=index, size=12)


def fake_imagenet_val(root, count=1000):
    for k, wnid in enumerate(WNIDS[:count]):
        write_images(root / "imagenet" / "val" / wnid, 1, seed=k, size=8)


@pytest.mark.parametrize(("name", "folder"), [("imagenet_r", "imagenet-r"), ("imagenet_a", "imagenet-a"),
                                              ("imagenet_sketch", "sketch")])  # fmt: skip
def test_wnid_sets_are_their_folders_classes(tmp_path, name, folder):
    fake_r(tmp_path, folder)
    loaded = load_dataset(name, "test", tmp_path, download=False)
    table = classnames.imagenet1k()
    assert loaded.classnames == tuple(table[w] for w in sorted(R_WNIDS))
    assert [(p.parent.name, label) for p, label in loaded.dataset.samples] == [
        (w, k) for k, w in enumerate(sorted(R_WNIDS)) for _ in range(2)
    ]


def test_imagenet_v2_folders_are_class_indices(tmp_path):
    """Folder "10" holds class 10 (a sorted ImageFolder would call it class 2)."""
    fake_v2(tmp_path)
    loaded = load_dataset("imagenet_v2", "test", tmp_path, download=False)
    assert [(p.parent.name, label) for p, label in loaded.dataset.samples] == [("2", 2), ("10", 10)]
    assert len(loaded.classnames) == 1000 and loaded.classnames[10] == classnames.imagenet1k()[WNIDS[10]]
    assert loaded.dataset.classes == WNIDS


def test_imagenet_o_is_one_unlabelled_set(tmp_path):
    fake_r(tmp_path, "imagenet-o", ["n00000001", "n00000002"])
    loaded = load_dataset("imagenet_o", "test", tmp_path, download=False)
    assert len(loaded.dataset) == 4 and {label for _, label in loaded.dataset.samples} == {-1}


def test_r_downloads_through_pytorch_ood_whole(tmp_path, monkeypatch):
    import pytorch_ood.dataset.img as pood

    def fetch(root, download):  # what pytorch-ood's ImageNetR leaves after download_and_extract_archive
        assert download
        fake_r(Path(root))

    monkeypatch.setattr(pood, "ImageNetR", fetch)
    assert len(load_dataset("imagenet_r", "test", tmp_path, download=True).dataset) == 6

    def broken(root, download):
        fake_r(Path(root), "imagenet-a")
        raise RuntimeError("md5 mismatch")

    monkeypatch.setattr(pood, "ImageNetA", broken)
    with pytest.raises(UserError, match="md5 mismatch"):
        load_dataset("imagenet_a", "test", tmp_path, download=True)
    assert not (tmp_path / "imagenet-a").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["imagenet-r"]


def test_full_spectrum_labels_by_wnid(tmp_path):
    fake_imagenet_val(tmp_path)
    fake_r(tmp_path)
    fake_v2(tmp_path)
    imagenet = load_dataset("imagenet", "test", tmp_path, download=False)
    pairs = [("imagenet_r", 5), ("imagenet_v2", None)]
    shifted = [load_dataset(n, "test", tmp_path, download=False, limit=lim) for n, lim in pairs]
    joined = full_spectrum(imagenet, shifted)
    assert len(joined.dataset) == 1000 + 5 + 2 and joined.classnames == imagenet.classnames
    labels = [joined.dataset[k][1] for k in range(1000, 1007)]
    r_files = [shifted[0].dataset.dataset.samples[i][0] for i in shifted[0].dataset.indices]
    assert labels[:5] == [WNIDS.index(p.parent.name) for p in r_files]
    assert labels[5:] == [2, 10]
    assert joined.identity != imagenet.identity


def test_full_spectrum_refuses_foreign_classes(tmp_path):
    fake_r(tmp_path)
    digits = load_dataset("digits", "test")
    with pytest.raises(UserError, match=r"imagenet_r cannot be shifted ID here: 3 of its 3 classes are not ID"):
        full_spectrum(digits, [load_dataset("imagenet_r", "test", tmp_path, download=False)])
    r = load_dataset("imagenet_r", "test", tmp_path, download=False)
    with pytest.raises(UserError, match=r"faces cannot be shifted ID: only sets read from image files can"):
        full_spectrum(r, [load_dataset("faces")])
    flat = f"folder:{tmp_path / 'imagenet-r' / R_WNIDS[0]}"
    with pytest.raises(UserError, match="has no classes, so its images cannot count as ID"):
        full_spectrum(r, [load_dataset(flat)])


def test_eval_full_spectrum_end_to_end(tmp_path):
    root = tmp_path / "data"
    fake_imagenet_val(root)
    fake_r(root)
    write_images(root / "iNaturalist" / "images", 4, seed=3, size=12, suffix=".jpg")
    argv = [*TINY, "--in", "imagenet", "--out", "inaturalist", "--shifted-id", "imagenet_r", "--no-download",
            "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"),
            "--no-plots"]  # fmt: skip
    summary = eval_ood_detection.main(argv)
    assert summary["samples"] == {"ID": 1006, "inaturalist": 4}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any(n.startswith("full-spectrum ID: the 1006 ID test images are imagenet's 1000") for n in saved["notes"])
    assert saved["config"]["shifted_id"] == ["imagenet_r"]


def test_openood_shifted_id_lists_keep_id_labels(tmp_path):
    home, bench = tmp_path / oo.HOME, oo.BENCHMARKS["openood_imagenet200"]
    wnids = [WNIDS[3], WNIDS[0]]
    train = [(f"imagenet_1k/train/{w}/a.JPEG", k) for k, w in enumerate(wnids)]
    _write_list(home, bench, "train_imagenet200.txt", train)
    entries = [("imagenet_r/x/0.jpg", 1), ("imagenet_r/y/1.jpg", 0)]
    _write_list(home, bench, "test_imagenet200_r.txt", entries)
    (home / "images_largescale").mkdir(parents=True)
    _images(home / "images_largescale", [r for r, _ in entries], seed=1)
    loaded = load_dataset("openood_imagenet200:imagenet_r", "test", tmp_path, download=False)
    assert [label for _, label in loaded.dataset.samples] == [1, 0] and loaded.dataset.classes == wnids


def test_zero_shot_on_imagenet_r_is_among_its_classes(tmp_path):
    """As ID, ImageNet-R is classified among its own classes (CLIP's 200-way protocol), here the 3 fake ones."""
    fake_r(tmp_path / "data")
    play_with_clip.main(
        [
            *TINY,
            "--mode",
            "zeroshot",
            "--in",
            "imagenet_r",
            "--data-root",
            str(tmp_path / "data"),
            "--no-download",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out-dir",
            str(tmp_path / "z"),
        ]
    )
    saved = json.loads((tmp_path / "z" / "results.json").read_text())
    table = classnames.imagenet1k()
    assert set(saved["per_class"]) == {table[w] for w in R_WNIDS}


def test_openood_shifted_archive_downloads_with_gdown(tmp_path, monkeypatch):
    """pytorch-ood's downloader has no imagenet_r/v2/c: those come with gdown from OpenOOD's ids, staged, whole."""
    import sys
    import types
    import zipfile

    home, bench = tmp_path / oo.HOME, oo.BENCHMARKS["openood_imagenet200"]
    _write_list(home, bench, "train_imagenet200.txt", [(f"imagenet_1k/train/{WNIDS[0]}/a.JPEG", 0)])
    _write_list(home, bench, "test_imagenet200_r.txt", [("imagenet_r/x/0.jpg", 0)])
    picture = write_images(tmp_path / "src", 1, seed=4, size=12, suffix=".jpg")[0]
    fetched = []

    def download(id, output, quiet):
        fetched.append(id)
        with zipfile.ZipFile(output, "w") as archive:  # OpenOOD's archives unpack bare into <root>/<name>/
            archive.write(picture, "x/0.jpg")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    loaded = load_dataset("openood_imagenet200:imagenet_r", "test", tmp_path, download=True)
    assert fetched == [oo.CSID_ARCHIVES["imagenet_r"]] and len(loaded.dataset) == 1
    assert sorted(p.name for p in home.iterdir()) == [oo.LISTS, "imagenet_r"]  # no staging folder left

    class FileURLRetrievalError(Exception):  # gdown's, on a Drive quota page: not an OSError
        pass

    def quota(id, output, quiet):
        raise FileURLRetrievalError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=quota))
    _write_list(home, bench, "test_imagenet200_c.txt", [("imagenet_c/0/a.jpg", 0)])
    with pytest.raises(UserError, match=r"downloading OpenOOD's 'imagenet_c' failed \(FileURLRetrievalError: Too"):
        load_dataset("openood_imagenet200:imagenet_c", "test", tmp_path, download=True)
    assert sorted(p.name for p in home.iterdir()) == [oo.LISTS, "imagenet_r"]

    monkeypatch.setitem(sys.modules, "gdown", None)
    _write_list(home, bench, "test_imagenet200_v2.txt", [("imagenet_v2/0/a.jpg", 0)])
    with pytest.raises(UserError, match=r"downloading OpenOOD's 'imagenet_v2' needs gdown"):
        load_dataset("openood_imagenet200:imagenet_v2", "test", tmp_path, download=True)

"""MCM's fine-grained ID sets and CLIP's Flowers/Aircraft: fake trees in each release's layout, read by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import write_images
from utils.data.fine_grained import flowers102_clip
from utils.data.registry import DATASETS
from utils.data.splits import load_dataset
from utils.errors import UserError
from utils.prompts import TEMPLATE_SETS

FINE_GRAINED = ("cub200", "stanford_cars", "food101", "oxford_pets", "flowers102", "fgvc_aircraft")


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_images(path.parent, 1, seed=seed, size=10, suffix=path.suffix)[0].rename(path)


def fake_cub(root):
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "141.Artic_Tern"]
    images = [(1, "002.Laysan_Albatross/b.jpg", 2, 0), (2, "001.Black_footed_Albatross/a.jpg", 1, 1),
              (3, "141.Artic_Tern/c.jpg", 3, 0), (4, "001.Black_footed_Albatross/d.jpg", 1, 0)]  # fmt: skip
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(classes, 1)))
    (base / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in images))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in images))
    (base / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in images))
    for i, path, _, _ in images:
        _image(base / "images" / path, i)
    return base


def test_cub_splits_labels_and_mcm_names(tmp_path):
    base = fake_cub(tmp_path)
    test = load_dataset("cub200", "test", tmp_path, download=False)
    assert test.classnames == ("Black footed Albatross", "Laysan Albatross", "Artic Tern")  # MCM's, typo kept
    assert [(p.relative_to(base / "images").as_posix(), label) for p, label in test.dataset.samples] == [
        ("002.Laysan_Albatross/b.jpg", 1), ("141.Artic_Tern/c.jpg", 2), ("001.Black_footed_Albatross/d.jpg", 0)
    ]  # fmt: skip
    train = load_dataset("cub200", "train", tmp_path, download=False)
    assert [label for _, label in train.dataset.samples] == [0]
    (base / "train_test_split.txt").unlink()
    with pytest.raises(UserError, match=r"train_test_split\.txt is missing"):
        load_dataset("cub200", "test", tmp_path, download=False)


def test_food101_names_are_clips(tmp_path):
    base = tmp_path / "food-101"
    meta = {"cheesecake": ["cheesecake/1"], "cheese_plate": ["cheese_plate/2"], "apple_pie": ["apple_pie/3"]}
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "test.json").write_text(json.dumps(meta))
    for k, paths in enumerate(meta.values()):
        _image(base / "images" / f"{paths[0]}.jpg", k)
    loaded = load_dataset("food101", "test", tmp_path, download=False)
    assert loaded.classnames == ("apple pie", "cheese plate", "cheesecake")  # label order: sorted folder names
    image, label = loaded.dataset[0]
    assert image.mode == "RGB" and label == 2


def test_pets_train_is_trainval_and_names_verbatim(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    rows = {"trainval": ["Abyssinian_1 1 1 1", "american_bulldog_2 2 2 1"], "test": ["american_bulldog_3 2 2 1"]}
    for split, lines in rows.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for k, line in enumerate(lines):
            _image(base / "images" / f"{line.split()[0]}.jpg", k)
    train = load_dataset("oxford_pets", "train", tmp_path, download=False)
    assert len(train.dataset) == 2 and train.classnames == ("Abyssinian", "American Bulldog")


def test_flowers_get_clips_names(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import Flowers102

    base = tmp_path / "flowers-102"
    base.mkdir()
    labels = np.array([1, 102, 16, 60])  # 1-based, per image id 1..4
    savemat(base / "imagelabels.mat", {"labels": labels})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2]), "valid": np.array([3, 1]), "tstid": np.array([4, 2])})
    for image_id in range(1, 5):
        _image(base / "jpg" / f"image_{image_id:05d}.jpg", image_id)
    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)  # md5s of the real .mat files
    test = load_dataset("flowers102", "test", tmp_path, download=False)
    assert [test.dataset[k][1] for k in range(2)] == [59, 101]
    assert test.classnames == flowers102_clip() and len(test.classnames) == 102
    assert (test.classnames[15], test.classnames[59], test.classnames[92]) == (
        "globe flower", "pink and yellow dahlia", "air plant"
    )  # fmt: skip
    assert len(load_dataset("flowers102", "val", tmp_path, download=False).dataset) == 2


def test_aircraft_names_verbatim(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nF/A-18\nA300B4\n")
    (data / "images_variant_test.txt").write_text("0001 F/A-18\n0002 707-320\n")
    for k, name in enumerate(("0001", "0002")):
        _image(data / "images" / f"{name}.jpg", k)
    loaded = load_dataset("fgvc_aircraft", "test", tmp_path, download=False)
    assert loaded.classnames == ("707-320", "F/A-18", "A300B4")  # cleaning folder names would split F/A-18
    assert [loaded.dataset[k][1] for k in range(2)] == [1, 0]


def test_cars_from_the_devkit_layout_without_a_download(tmp_path):
    """torchvision's StanfordCars raises ValueError whenever download=True (its URL is dead), even with the data:
    the registry never asks, so the set loads with downloads on; names are the devkit's, verbatim."""
    from scipy.io import savemat

    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = ["Ram C/V Cargo Van Minivan 2012", "AM General Hummer SUV 2000"]
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)})
    annotations = np.zeros(2, dtype=[("fname", object), ("class", np.int64)])
    annotations[0], annotations[1] = ("00001.jpg", 2), ("00002.jpg", 1)
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations})
    for k, name in enumerate(("00001.jpg", "00002.jpg")):
        _image(base / "cars_test" / name, k)
    loaded = load_dataset("stanford_cars", "test", tmp_path, download=True)
    assert loaded.classnames == tuple(names) and [loaded.dataset[k][1] for k in range(2)] == [1, 0]


@pytest.mark.parametrize("name", FINE_GRAINED)
def test_fine_grained_sets_default_to_mcms_ood_partners(name):
    assert DATASETS[name].ood == ("inaturalist", "sun", "places", "textures")


def test_clip_templates_for_the_sets():
    assert TEMPLATE_SETS["food101"] == ("a photo of {}, a type of food.",)
    assert len(TEMPLATE_SETS["cars"]) == 8 and len(TEMPLATE_SETS["aircraft"]) == 2
    assert all("{}" in t for name in ("cars", "food101", "pets", "flowers102", "aircraft") for t in TEMPLATE_SETS[name])

"""Datasets: the registry, the offline ones, folders, corrupt files, --limit, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_images
from utils.data import DATASETS, classnames, load_dataset
from utils.data.loaders import collate, make_loader, sample_name
from utils.errors import UserError

OFFLINE = ("digits", "digits_ood", "digits_aux")
BUILT_IN_FAR_OOD = ("faces", "skimage_textures")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_spec_says_how_to_get_it(name):
    spec = DATASETS[name]
    assert spec.source and spec.layout
    assert set(spec.splits) <= {"train", "test"} and "test" in spec.splits
    assert all(partner in DATASETS for partner in spec.ood)


@pytest.mark.parametrize("name", sorted(set(DATASETS) - set(OFFLINE) - set(BUILT_IN_FAR_OOD)))
def test_missing_dataset_names_url_and_layout(tmp_path, name):
    spec = DATASETS[name]
    with pytest.raises(UserError) as info:
        load_dataset(name, "test", root=tmp_path / "empty", download=False)
    message = str(info.value)
    assert name in message and spec.source in message and spec.layout in message


@pytest.mark.parametrize("name", OFFLINE)
def test_digits_sets_load(name):
    test = load_dataset(name, "test")
    train = load_dataset(name, "train")
    image, _ = test.dataset[0]
    assert image.size == (32, 32) and image.mode == "RGB"
    labels = {label for _, label in (test.dataset[i] for i in range(len(test.dataset)))}
    assert labels == set(range(len(test.classnames)))
    assert len(train.dataset) > len(test.dataset) > 30


def test_digits_split_is_fixed_and_disjoint():
    from utils.data.digits import Digits

    train, test = Digits("train", range(10)), Digits("test", range(10))
    assert len(train) + len(test) == 1797
    assert not set(train.positions) & set(test.positions)
    assert np.array_equal(Digits("test", range(10)).positions, test.positions)


def test_digits_classes_and_reserved_outliers():
    assert DATASETS["digits"].classnames == ["digit zero", "digit one", "digit two", "digit three", "digit four"]
    assert [n.split()[-1] for n in DATASETS["digits_ood"].classnames] == ["seven", "eight", "nine"]
    assert [n.split()[-1] for n in DATASETS["digits_aux"].classnames] == ["five", "six"]
    assert DATASETS["digits"].ood == ("digits_ood", "faces", "skimage_textures")


@pytest.mark.parametrize(
    ("name", "count", "classes"), [("faces", 100, ("face",)), ("skimage_textures", 192, ("brick", "grass", "gravel"))]
)
def test_built_in_far_ood_sets(name, count, classes):
    data = load_dataset(name)
    assert len(data.dataset) == count and data.classnames == classes
    image, label = data.dataset[count - 1]
    assert image.size == (32, 32) and image.mode == "RGB" and label == len(classes) - 1


def test_limit_is_seeded_and_deterministic():
    a = load_dataset("digits", "test", limit=40, seed=3)
    b = load_dataset("digits", "test", limit=40, seed=3)
    c = load_dataset("digits", "test", limit=40, seed=4)
    assert len(a.dataset) == 40
    assert list(a.dataset.indices) == list(b.dataset.indices) != list(c.dataset.indices)
    assert a.identity == b.identity != c.identity
    assert len(load_dataset("digits", "test", limit=10**6).dataset) == len(load_dataset("digits", "test").dataset)


def test_image_folder_tree(image_tree):
    data = load_dataset(f"folder:{image_tree}", "test")
    assert data.classnames == ("cats", "dogs")
    assert [label for _, label in data.dataset.samples] == [0] * 5 + [1] * 5


@pytest.mark.parametrize(
    ("raw", "readable"),
    [
        ("/a/airfield", "airfield"),
        ("/b/bakery/shop", "bakery shop"),
        ("sea_lion", "sea lion"),
        ("n01440764", "n01440764"),
    ],
)
def test_readable_classnames(raw, readable):
    from utils.data.loading import readable_classname

    assert readable_classname(raw) == readable


def test_folder_classnames_are_readable(tmp_path):
    write_images(tmp_path / "t" / "golden_retriever", 1, seed=0, size=8)
    write_images(tmp_path / "t" / "tabby_cat", 1, seed=1, size=8)
    assert load_dataset(f"folder:{tmp_path / 't'}").classnames == ("golden retriever", "tabby cat")


def test_flat_folder(tmp_path):
    write_images(tmp_path / "flat", 4, seed=0, suffix=".jpg")
    data = load_dataset(f"folder:{tmp_path / 'flat'}", "test")
    assert len(data.dataset) == 4 and data.classnames is None
    assert data.dataset[0][1] == -1


def test_folder_identity_tracks_files(image_tree):
    before = load_dataset(f"folder:{image_tree}").identity
    write_images(image_tree / "dogs", 6, seed=9)  # rewrites five, adds img_005
    assert load_dataset(f"folder:{image_tree}").identity != before


def test_imagenet_style_subset_uses_listed_wnids(tmp_path):
    for split in ("train", "val"):
        for wnid in classnames.IMAGENET20:
            write_images(tmp_path / "imagenet20" / split / wnid, 1, seed=0, size=8)
    data = load_dataset("imagenet20", "train", root=tmp_path)
    assert len(data.dataset) == 20 and len(data.classnames) == 20
    assert data.classnames[data.dataset.samples[0][1]] == classnames.IMAGENET20[sorted(classnames.IMAGENET20)[0]]


def test_imagenet_tables():
    table = classnames.imagenet1k()
    assert len(table) == 1000 and list(table) == sorted(table)
    assert table["n01440764"] == "tench"
    assert len(classnames.imagenet100()) == 100
    assert set(classnames.IMAGENET10) <= set(table) and set(classnames.IMAGENET20) <= set(table)
    assert classnames.IMAGENET10_MCM["n02389026"] == "horse" and "n01728572" not in classnames.IMAGENET10_MCM


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="known: cifar10"):
        load_dataset("cifar11")
    with pytest.raises(UserError, match="no 'train' split"):
        load_dataset("isun", "train")


def test_corrupt_files_are_skipped_and_named(image_tree, tiny):
    bad = image_tree / "cats" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = image_tree / "dogs" / "truncated.jpg"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 128).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    data = load_dataset(f"folder:{image_tree}")
    batches = list(make_loader(data.dataset, tiny.preprocess, batch_size=4, workers=0))
    failures = [f for b in batches for f in b.failures]
    loaded = sum(len(b.indices) for b in batches)
    assert loaded == 10 and len(failures) == 2
    assert {sample_name(data.dataset, i) for i, _ in failures} == {str(bad), str(truncated)}


def test_preprocessing_equals_open_clips_transform(tiny):
    import open_clip

    _, _, reference = open_clip.create_model_and_transforms("tiny")
    data = load_dataset("digits", "test", limit=8)
    batch = next(iter(make_loader(data.dataset, tiny.preprocess, batch_size=8, workers=0)))
    expected = torch.stack([reference(data.dataset[i][0]) for i in range(8)])
    assert torch.equal(batch.images, expected)


def test_collate_all_failed():
    batch = collate([(None, -1, 0, "OSError: x"), (None, -1, 1, "OSError: y")])
    assert batch.images is None and len(batch.failures) == 2 and len(batch.indices) == 0


def test_hidden_files_are_not_images(image_tree):
    write_images(image_tree / "cats" / ".ipynb_checkpoints", 2, seed=4)
    (image_tree / "dogs" / "._img_000.png").write_bytes(b"AppleDouble")
    data = load_dataset(f"folder:{image_tree}")
    assert len(data.dataset) == 10


def test_images_beside_class_folders_warn(image_tree):
    write_images(image_tree, 1, seed=8)
    with pytest.warns(UserWarning, match="beside its class folders"):
        data = load_dataset(f"folder:{image_tree}")
    assert data.classnames is None and len(data.dataset) == 11

"""Datasets: the registry, the offline ones, folders, corrupt files, --limit, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_images
from utils.data import classnames
from utils.data.loaders import collate, make_loader, sample_name
from utils.data.registry import DATASETS
from utils.data.splits import load_dataset
from utils.errors import UserError

OFFLINE = ("digits", "digits_ood", "digits_aux")
BUILT_IN_FAR_OOD = ("faces", "skimage_textures")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_spec_says_how_to_get_it(name):
    spec = DATASETS[name]
    assert spec.source and spec.layout
    assert set(spec.splits) <= {"train", "val", "test"} and "test" in spec.splits
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
    from utils.data.splits import readable_classname

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


@pytest.mark.parametrize(
    ("name", "inside"),
    [("inaturalist", "iNaturalist/images"), ("sun", "SUN/images"), ("places", "Places/images"),
     ("lsun", "LSUN/test"), ("lsun_resize", "LSUN_resize/test"), ("isun", "iSUN/iSUN_patches")],
)  # fmt: skip
def test_benchmark_tarballs_are_unlabelled(tmp_path, name, inside):
    """The MOS and ODIN tarballs hold one sub-folder: a container, never a class named 'images' or 'test'."""
    write_images(tmp_path / inside, 3, seed=0, size=8, suffix=".jpg")
    data = load_dataset(name, "test", root=tmp_path)
    assert data.classnames is None
    assert [label for _, label in data.dataset.samples] == [-1, -1, -1]


def test_a_single_sub_folder_is_not_a_class(tmp_path):
    write_images(tmp_path / "mine" / "photos", 2, seed=0, size=8)
    data = load_dataset(f"folder:{tmp_path / 'mine'}", "test")
    assert data.classnames is None and len(data.dataset) == 2


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


def test_published_subsets_prompt_with_mcms_released_names():
    """MCM's utils/common.py: ImageNet-10's hand-written names; ImageNet-100's from the Keras class index."""
    from utils.data.registry import get_spec

    assert sorted(classnames.IMAGENET10_MCM.values()) == sorted([
        "warplane", "sports car", "brambling bird", "Siamese cat", "antelope", "swiss mountain dog", "bull frog",
        "garbage truck", "horse", "container ship"])  # fmt: skip
    mcm100, ours100 = classnames.imagenet100_mcm(), classnames.imagenet100()
    assert list(mcm100) == classnames.IMAGENET100_WNIDS and set(mcm100) == set(ours100)
    assert (mcm100["n03000684"], ours100["n03000684"]) == ("chain saw", "chainsaw")
    assert get_spec("imagenet20").ood == ("imagenet10_mcm",)  # the partner of the published ImageNet-20 numbers
    names = get_spec("imagenet10_mcm").classnames()
    assert names[0] == "brambling bird" and names[-1] == "warplane"  # wnid order = ImageFolder's label order


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


class _Labelled(torch.utils.data.Dataset):
    """A dataset with torchvision's `labels` attribute (SVHN's), images of 40 x 20 pixels."""

    def __init__(self, labels):
        self.labels = list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return Image.new("RGB", (40, 20), (index % 256, 0, 0)), self.labels[index]


def test_first_per_class_keeps_file_order():
    from utils.data.splits import first_per_class

    capped = first_per_class(_Labelled([3, 1, 3, 3, 1, 0, 1, 1]), 2)
    assert capped.indices == [0, 1, 2, 4, 5]  # the first two of each class, in the order of the file


def test_few_shot_draws_k_per_class_seeded_and_keeps_small_classes_whole():
    from utils.data.splits import few_shot

    labels = [0] * 10 + [1] * 3 + [2] * 7
    a, b, c = few_shot(_Labelled(labels), 4, 0), few_shot(_Labelled(labels), 4, 0), few_shot(_Labelled(labels), 4, 1)
    picked = np.asarray(labels)[a.indices]
    assert np.bincount(picked).tolist() == [4, 3, 4]  # class 1 has only 3: all kept, none repeated
    assert len(set(a.indices)) == len(a.indices) and a.indices == sorted(a.indices)
    assert a.indices == b.indices != c.indices
    with pytest.raises(UserError, match="--shots"):
        few_shot(_Labelled(labels), 0, 0)


def test_shots_apply_to_the_id_train_split_only_and_name_the_subset():
    from utils.data.splits import DataOptions

    shots = DataOptions(shots=8, seed=2)
    train, test = shots.load_id_train("digits"), shots.load("digits", "test")
    labels = np.asarray([label for _, label in train.dataset])
    assert np.bincount(labels).tolist() == [8] * 5
    assert len(test.dataset) == len(DataOptions().load("digits", "test").dataset)
    whole = len(DataOptions().load("digits", "train").dataset)
    assert len(shots.load("digits", "train").dataset) == whole  # an OOD set's or outlier pool's train split: whole
    assert train.identity != DataOptions(shots=8, seed=3).load_id_train("digits").identity
    limited = DataOptions(shots=2, limit=100).load_id_train("digits")  # --limit first, then K per class of those
    assert len(limited.dataset) == 10


def test_ood_protocol_resizes_and_caps(tmp_path, monkeypatch):
    """CIFAR as ID: every OOD image 32 x 32 (squashed, bilinear), SVHN at its first 1,000 per class, recorded."""
    from utils.data.benchmark import BenchmarkRequest, load_ood_sets
    from utils.data.registry import get_spec
    from utils.data.splits import DataOptions

    write_images(tmp_path / "big", 2, seed=0, size=64)
    options, big = DataOptions(), [f"folder:{tmp_path / 'big'}"]
    data = load_ood_sets(BenchmarkRequest("cifar10", big), options)[0]
    image, _ = data.dataset[0]
    assert image.size == (32, 32)
    with Image.open(data.dataset.dataset.samples[0][0]) as original:
        expected = original.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    kept = load_ood_sets(BenchmarkRequest("cifar10", big, ood_resize=False), options)[0]
    assert kept.dataset[0][0].size == (64, 64) and kept.identity != data.identity  # the cache tells them apart
    assert load_ood_sets(BenchmarkRequest("digits", big), options)[0].dataset[0][0].size == (64, 64)
    calls = []

    def load(self, name, split, spec=None, **kw):
        assert spec is get_spec(name)  # the registry entry travels with the load
        calls.append((name, kw))
        return data

    monkeypatch.setattr(DataOptions, "load", load)
    load_ood_sets(BenchmarkRequest("cifar100", ["svhn", "textures"]), options)
    assert calls == [("svhn", {"resize": 32, "per_class": 1000}), ("textures", {"resize": 32, "per_class": None})]
    assert get_spec("cifar10").ood_protocol.per_class == {"svhn": 1000}


@pytest.fixture
def imagenet_subsets(tmp_path):
    """imagenet10 (train, val) and imagenet100 (train) trees, one tiny image per wnid folder."""
    for name, wnids, splits in [("imagenet10", classnames.IMAGENET10, ("train", "val")),
                                ("imagenet100", classnames.IMAGENET100_WNIDS, ("train",))]:  # fmt: skip
        for split in splits:
            for k, wnid in enumerate(wnids):
                write_images(tmp_path / name / split / wnid, 1, seed=k, size=8)
    return tmp_path


def test_leakage_guard_compares_wnids_not_only_names(imagenet_subsets):
    """ImageNet-100's "schooner" is ImageNet-20's "sailboat" (n04147183): the same class under two names."""
    from utils.data.leakage import check_no_leakage

    root = imagenet_subsets
    train, aux = load_dataset("imagenet10", "train", root), load_dataset("imagenet100", "train", root)
    with pytest.raises(UserError, match="shares classes with the OOD test set imagenet20: n01632458, n04147183"):
        check_no_leakage(aux, ["imagenet20"], root, train)  # imagenet20 is not on disk: the registry's wnids
    check_no_leakage(aux, ["inaturalist", "sun", "places", "textures"], root, train)  # finetune_clip.py's example


def test_leakage_guard_refuses_id_test_images_as_outliers(imagenet_subsets, tmp_path):
    from utils.data.leakage import check_no_leakage

    root = imagenet_subsets
    train = load_dataset("imagenet10", "train", root)
    aux = load_dataset(f"folder:{root / 'imagenet10' / 'val'}", "test")  # wnid folders of the ID test split
    with pytest.raises(UserError, match=r"overlaps the ID set imagenet10 \(classes n01530575"):
        check_no_leakage(aux, [], root, train)
    copies = tmp_path / "pool"  # the same files under other folder names: caught by path
    (copies / "a").mkdir(parents=True)
    (copies / "b").mkdir()
    for k, path in enumerate(sorted((root / "imagenet10" / "val").rglob("*.png"))[:2]):
        (copies / "ab"[k] / path.name).symlink_to(path)
    with pytest.raises(UserError, match=r"overlaps the ID set imagenet10 \(2 images of its test split"):
        check_no_leakage(load_dataset(f"folder:{copies}", "test"), [], root, train)


def test_labels_of_reads_torchvisions_private_label_lists():
    """Food101/Pets/Flowers keep `_labels`, StanfordCars `_samples`: few-shot draws and --select's per-class
    hold-out need them without reading images."""
    from types import SimpleNamespace

    from utils.data.splits import labels_of

    assert labels_of(SimpleNamespace(_labels=[2, 0, 1])).tolist() == [2, 0, 1]
    assert labels_of(SimpleNamespace(_samples=[("a.jpg", 1), ("b.jpg", 0)])).tolist() == [1, 0]

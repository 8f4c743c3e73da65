"""Covariate-shifted ImageNet test sets: V2, Sketch, R, A (and ImageNet-O as an OOD set), read by class folder.

Every set is read by class folder and labelled by wnid: ImageNetV2's folders are ImageNet class indices (0..999,
which a sorted ImageFolder would misnumber: "10" sorts before "2"); Sketch's, R's and A's are wnids. R and A cover
200 classes each, which become their own class list when they are the ID set (CLIP's 200-way protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from utils.atomic import fetch_whole
from utils.data import classnames as names
from utils.data.folder import ImageFiles
from utils.errors import UserError

V2_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz"
V2_FOLDER = "imagenetv2-matched-frequency-format-val"
POOD_CLASSES = {"imagenet-r": "ImageNetR", "imagenet-a": "ImageNetA", "imagenet-o": "ImageNetO"}  # pytorch-ood's


def _fetch_v2(root: Path) -> None:
    """ImageNetV2 (matched frequency) from its Hugging Face release, extracted beside `root` then moved in whole."""
    from torchvision.datasets.utils import download_and_extract_archive

    fetch_whole(root / V2_FOLDER, lambda staging: download_and_extract_archive(V2_URL, str(staging),
                                                                               remove_finished=True))  # fmt: skip


def _fetch_pood(root: Path, folder: str) -> None:
    """ImageNet-R/-A/-O through pytorch-ood (its URL and md5), extracted beside `root` then moved in whole."""
    import pytorch_ood.dataset.img as pood

    fetch_whole(root / folder, lambda staging: getattr(pood, POOD_CLASSES[folder])(str(staging), download=True))


def _wnid_folders(path: Path) -> ImageFiles:
    """One class per wnid folder (sorted), named from the ImageNet-1k table; folders that are no ImageNet-1k wnid
    are left out, and a tree with none is an error."""
    table = names.imagenet1k()
    dataset = ImageFiles(path, classes=sorted(d.name for d in path.iterdir() if d.is_dir() and d.name in table)
                         if path.is_dir() else None)  # fmt: skip
    if not dataset.classes:
        raise UserError(f"{path} holds no ImageNet wnid folders (n01440764/, ...)")
    dataset.classnames = [table[w] for w in dataset.classes]
    return dataset


def wnid_set(folder: str):
    """Builder of a set kept in wnid folders (`folder`: imagenet-r, imagenet-a, sketch), fetched where pytorch-ood
    can."""

    def build(root: Path, split: str, download: bool) -> ImageFiles:
        path = root / folder
        if not path.is_dir() and download and folder in POOD_CLASSES:
            _fetch_pood(root, folder)
        return _wnid_folders(path)

    return build


def imagenet_v2(root: Path, split: str, download: bool) -> ImageFiles:
    """ImageNetV2 matched-frequency: folder i holds class i of ImageNet-1k (sorted wnids)."""
    path = root / V2_FOLDER
    if not path.is_dir() and download:
        _fetch_v2(root)
    indices = [str(i) for i in range(1000)]
    by_index = ImageFiles(path, classes=indices)
    table = names.imagenet1k()
    wnids = sorted(table)
    return ImageFiles.listed(path, by_index.samples, wnids, [table[w] for w in wnids])


def imagenet_o(root: Path, split: str, download: bool) -> ImageFiles:
    """ImageNet-O: 2,000 images of 200 classes outside ImageNet-1k, one unlabelled OOD set."""
    path = root / "imagenet-o"
    if not path.is_dir() and download:
        _fetch_pood(root, "imagenet-o")
    return ImageFiles(path, labelled=False)

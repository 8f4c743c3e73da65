"""Building a split of a registered dataset: its class names, fixed subsets, `--limit`, and an identity for the cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from utils.data.loaders import sample_name
from utils.data.registry import DatasetSpec, get_spec
from utils.errors import Missing, UserError


@dataclass
class LoadedDataset:
    """A built dataset with its class names, an identity string for the feature cache, and its registry entry (so
    nothing downstream asks the registry again)."""

    name: str
    split: str
    dataset: Dataset
    classnames: tuple[str, ...] | None
    identity: str
    spec: DatasetSpec | None = None
    notes: tuple[str, ...] = ()  # what building it changed from what was asked (e.g. --shots beyond a class's size)


@dataclass
class DataOptions:
    """Where datasets live and how much of each to use: the data flags every script shares."""

    root: str | Path = "./data"
    download: bool = True
    limit: int | None = None
    seed: int = 0
    shots: int | None = None  # K images per class of every train split (few-shot protocols)

    def load(self, name: str, split: str, resize: int | None = None, per_class: int | None = None,
             spec: DatasetSpec | None = None) -> LoadedDataset:  # fmt: skip
        """One split of `name` (`spec`: its registry entry, where the caller holds it already)."""
        return load_dataset(name, split, self.root, self.download, self.limit, self.seed, resize, per_class, spec)

    def load_id_train(self, name: str, spec: DatasetSpec | None = None) -> LoadedDataset:
        """The ID set's train split, what scores fit and methods train on: `shots` per class where given (OOD sets
        and auxiliary pools read through `load`, whole)."""
        loaded = self.load(name, "train", spec=spec)
        if self.shots is None:
            return loaded
        dataset = few_shot(loaded.dataset, self.shots, self.seed)
        counts = np.bincount(np.unique(labels_of(loaded.dataset), return_inverse=True)[1])
        short = int((counts < self.shots).sum())
        notes = (f"--shots {self.shots}: {short} of the {len(counts)} classes of {name} train have fewer images and "
                 f"keep all of theirs{' (the whole train split is used)' if short == len(counts) else ''}",)
        return replace(loaded, dataset=dataset, identity=f"{name}|train|{dataset_identity(dataset)}",
                       notes=notes if short else ())  # fmt: skip


class Resized(Dataset):
    """Every image resized to size x size (bilinear, aspect not kept), as torchvision's Resize((size, size)) on PIL."""

    def __init__(self, dataset: Dataset, size: int):
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image, label = self.dataset[index]
        return image.resize((self.size, self.size), Image.Resampling.BILINEAR), label

    def describe(self, index: int) -> str:
        return sample_name(self.dataset, index)


def labels_of(dataset: Dataset) -> np.ndarray:
    """Every item's label, without reading an image (through Subsets)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attribute in ("targets", "labels", "_labels"):  # _labels: torchvision's Food101, OxfordIIITPet, Flowers102, ...
        if getattr(dataset, attribute, None) is not None:
            return np.asarray(getattr(dataset, attribute))
    for attribute in ("samples", "_samples"):  # (path, label) pairs; _samples: torchvision's StanfordCars
        if getattr(dataset, attribute, None) is not None:
            return np.asarray([label for _, label in getattr(dataset, attribute)])
    raise UserError(f"{type(dataset).__name__} has no labels to cap per class")


def first_per_class(dataset: Dataset, count: int) -> Dataset:
    """The first `count` images of each class, in file order (KNN-OOD's SVHN selection)."""
    labels = labels_of(dataset)
    keep = [i for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:count]]
    return Subset(dataset, sorted(keep))


def few_shot(dataset: Dataset, shots: int, seed: int) -> Dataset:
    """K images per class drawn without replacement, seeded; a class with fewer keeps all of them (Dassl's
    generate_fewshot_dataset with repeat=False, CoOp's sampler; its draws come from Python's random, ours from
    NumPy's, so the same seed picks other images)."""
    if shots < 1:
        raise UserError(f"--shots must be a positive number of images per class, got {shots}")
    labels, rng = labels_of(dataset), np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep += members[rng.permutation(len(members))[:shots]].tolist()
    return Subset(dataset, sorted(keep))


def readable_classname(raw: str) -> str:
    """A folder or dataset label as words for a prompt: '/b/bakery/shop' -> 'bakery shop', 'sea_lion' -> 'sea lion'."""
    parts = [p for p in raw.strip("/").split("/") if p]
    if len(parts) > 1 and len(parts[0]) == 1:  # Places365's alphabetical prefix
        parts = parts[1:]
    return " ".join(parts).replace("_", " ")


def _seeded_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if size is None or size >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    return Subset(dataset, np.sort(rng.choice(len(dataset), size=size, replace=False)).tolist())


def dataset_identity(dataset: Dataset) -> str:
    """What makes two builds of a dataset give the same images: sizes, subsets, file lists."""
    if isinstance(dataset, Subset):
        picked = np.asarray(dataset.indices, dtype=np.int64)
        return f"subset({len(picked)}:{hash_bytes(picked.tobytes())})<{dataset_identity(dataset.dataset)}>"
    if isinstance(dataset, ConcatDataset):
        return "+".join(dataset_identity(part) for part in dataset.datasets)
    if isinstance(dataset, Resized):
        return f"resized{dataset.size}<{dataset_identity(dataset.dataset)}>"
    fp = dataset.fingerprint() if hasattr(dataset, "fingerprint") else ""
    return f"{type(dataset).__name__}({len(dataset)}:{fp})"


def hash_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def load_dataset(
    name: str,
    split: str = "test",
    root: str | Path = "./data",
    download: bool = True,
    limit: int | None = None,
    seed: int = 0,
    resize: int | None = None,
    per_class: int | None = None,
    spec: DatasetSpec | None = None,
) -> LoadedDataset:
    """Build a dataset split (downloading where torchvision can), with its fixed subset and `--limit` applied.

    A benchmark protocol may cap it to its first `per_class` images per class and `resize` every image to a square.

    A dataset that is missing and cannot be fetched raises one UserError naming where to get it.
    """
    spec = spec or get_spec(name)
    if split not in spec.splits:
        raise UserError(f"dataset '{name}' has no '{split}' split (it has: {', '.join(spec.splits)})")
    root = Path(root).expanduser()
    try:
        dataset = spec.build(root, split, download)
    except (UserError, OSError, RuntimeError, ValueError) as err:  # torchvision: URLError offline, RuntimeError if
        # absent, ValueError for a refused download or a damaged annotation file
        raise Missing(
            f"dataset '{name}' ({split}) is not available under {root}: {str(err).strip() or type(err).__name__}\n"
            f"  get it from: {spec.source}\n  expected under --data-root: {spec.layout}"
        ) from err
    classes = spec.classnames() if callable(spec.classnames) else spec.classnames
    if classes is None:  # the dataset's exact prompt names, else its class folders made readable
        classes = getattr(dataset, "classnames", None) or [readable_classname(c) for c in getattr(dataset, "classes", None) or []]
    dataset = _seeded_subset(dataset, spec.subset, seed=0)
    if per_class is not None:
        dataset = first_per_class(dataset, per_class)
    if resize is not None:
        dataset = Resized(dataset, resize)
    if limit is not None:
        if limit <= 0:
            raise UserError(f"--limit must be positive, got {limit}")
        dataset = _seeded_subset(dataset, limit, seed)
    identity = f"{name}|{split}|{dataset_identity(dataset)}"
    return LoadedDataset(name, split, dataset, tuple(classes) if classes else None, identity, spec)


def renamed(data: LoadedDataset, names: list[str], flag: str = "--classnames") -> LoadedDataset:
    """`data` with other class names (same classes, same order): the images, and so the cache, are unchanged."""
    if not data.classnames or len(names) != len(data.classnames):
        have = f"{len(data.classnames)} classes" if data.classnames else "no classes (a flat folder?)"
        raise UserError(f"{flag} gives {len(names)} names but {data.name} has {have}; give one name per class, "
                        f"in the dataset's class order")  # fmt: skip
    return replace(data, classnames=tuple(names))

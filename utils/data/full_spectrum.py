"""Full-spectrum ID (OpenOOD's FSOOD): covariate-shifted sets joined to the ID test set, in its label space.

A shifted image of an ID class counts as ID; each is relabelled by its class folder (wnid)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from utils.data.folder import ImageFiles
from utils.data.splits import LoadedDataset, dataset_identity
from utils.errors import UserError


def _leaf(dataset: Dataset, name: str) -> tuple[ImageFiles, np.ndarray | None]:
    """The image folder under any Subsets (--limit), with the positions they keep."""
    positions = None
    while isinstance(dataset, Subset):
        picked = np.asarray(dataset.indices, dtype=np.int64)
        positions = picked if positions is None else picked[positions]
        dataset = dataset.dataset
    if not isinstance(dataset, ImageFiles):
        raise UserError(f"{name} cannot be shifted ID: only sets read from image files can ({type(dataset).__name__})")
    return dataset, positions


def class_ids(data: LoadedDataset) -> list[str]:
    """The class folders (wnids, or the dataset's own class list, else its class names) of a loaded set, in label
    order."""
    leaf = data.dataset
    while isinstance(leaf, Subset):
        leaf = leaf.dataset
    return list(getattr(leaf, "classes", None) or data.classnames or [])


def in_id_space(shifted: LoadedDataset, id_ids: Sequence[str]) -> Dataset:
    """`shifted`'s images labelled by the ID set's class index of each one's class (its wnid)."""
    base, positions = _leaf(shifted.dataset, shifted.name)
    index = {c: k for k, c in enumerate(id_ids)}
    if not base.classes:
        raise UserError(f"{shifted.name} has no classes, so its images cannot count as ID images of a class")
    if foreign := [c for c in base.classes if c not in index]:
        raise UserError(f"{shifted.name} cannot be shifted ID here: {len(foreign)} of its {len(base.classes)} "
                        f"classes are not ID classes ({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''})")
    if any(not 0 <= label < len(base.classes) for _, label in base.samples):
        raise UserError(f"{shifted.name} has images without a class (label -1 or beyond its {len(base.classes)} "
                        f"classes): only labelled sets can be shifted ID")  # fmt: skip
    samples = [(path, index[base.classes[label]]) for path, label in base.samples]
    relabelled = ImageFiles.listed(base.root, samples, list(id_ids))
    return relabelled if positions is None else Subset(relabelled, positions.tolist())


def full_spectrum(id_test: LoadedDataset, shifted: Sequence[LoadedDataset]) -> LoadedDataset:
    """The ID test set followed by each shifted set in the ID label space: every image counts as ID."""
    ids = class_ids(id_test)
    if not ids:
        raise UserError(f"--shifted-id needs an ID set with classes; {id_test.name} has none")
    parts = [id_test.dataset, *(in_id_space(data, ids) for data in shifted)]
    joined = ConcatDataset(parts)
    identity = f"{id_test.identity}|shifted:{'+'.join(d.name for d in shifted)}|{dataset_identity(joined)}"
    return LoadedDataset(id_test.name, id_test.split, joined, id_test.classnames, identity, id_test.spec)

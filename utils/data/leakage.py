"""Guard against auxiliary outliers that overlap the ID data or the OOD sets a fine-tuned model is evaluated on.

Classes are compared by identity, not only by name: a class's readable name and its folder (a wnid for the
ImageNet subsets), so ImageNet-100's "schooner" and ImageNet-20's "sailboat" (both n04147183) collide. Image
files are compared by resolved path against the ID train and test splits and every OOD set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset, Subset

from utils.data.splits import LoadedDataset, load_dataset
from utils.data.registry import get_spec
from utils.errors import UserError


def _parts(dataset: Dataset) -> list[Dataset]:
    if isinstance(dataset, Subset):
        return _parts(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [leaf for part in dataset.datasets for leaf in _parts(part)]
    return [dataset]


def _files(data: LoadedDataset) -> set[Path]:
    """Every image file the set may read (a --limit subset still owns its whole folder)."""
    return {Path(path).resolve() for part in _parts(data.dataset) for path, _ in getattr(part, "samples", None) or []}


def _classes(data: LoadedDataset) -> set[str]:
    """A set's class identities: its readable names and its class folders (wnids for the ImageNet subsets)."""
    folders = [c for part in _parts(data.dataset) if hasattr(part, "samples") for c in getattr(part, "classes", [])]
    return {c.lower() for c in [*(data.classnames or []), *folders]}


def _registered_classes(name: str) -> set[str]:
    """What the registry knows of a set that is not on disk: its class names and class folders."""
    spec = get_spec(name)
    names = spec.classnames() if callable(spec.classnames) else spec.classnames
    ids = spec.class_ids() if spec.class_ids else []
    return {c.lower() for c in [*(names or []), *ids]}


def _id_splits(id_data: LoadedDataset, root: str | Path) -> list[LoadedDataset]:
    splits = [id_data]
    spec = id_data.spec or get_spec(id_data.name)
    for split in spec.splits:
        if split != id_data.split:
            try:
                splits.append(load_dataset(id_data.name, split, root, download=False, spec=spec))
            except UserError:  # that split is not on disk: nothing of it can be in the pool
                pass
    return splits


def check_no_leakage(
    aux: LoadedDataset, ood_names: Sequence[str], root: str | Path, id_data: LoadedDataset | None = None
) -> None:
    """Refuse an auxiliary pool that is, or shares classes or image files with, the ID set (train or test split)
    or an evaluation OOD set."""
    aux_classes, aux_files = _classes(aux), _files(aux)
    for split in _id_splits(id_data, root) if id_data is not None else []:
        shared, files = aux_classes & _classes(split), aux_files & _files(split)
        if aux.name == split.name or shared or files:
            what = "it is the same set"
            if shared:
                what = f"classes {', '.join(sorted(shared)[:10])}"
            elif files:
                what = f"{len(files)} images of its {split.split} split, e.g. {sorted(files)[0]}"
            raise UserError(f"--aux {aux.name} overlaps the ID set {split.name} ({what}): the outlier pool would "
                            f"teach the model that ID images are OOD")  # fmt: skip
    for name in ood_names:
        if name == aux.name:
            raise UserError(f"--aux {aux.name} is also an OOD test set ({name}): outliers seen in training would be "
                            f"scored as unseen; pick another auxiliary pool or other --eval-out sets")  # fmt: skip
        try:
            ood = load_dataset(name, "test", root, download=False)
        except UserError:  # not here: compare what the registry knows without the files
            shared, files = aux_classes & _registered_classes(name), set()
        else:
            shared, files = aux_classes & _classes(ood), aux_files & _files(ood)
        if shared:
            raise UserError(
                f"--aux {aux.name} shares classes with the OOD test set {name}: {', '.join(sorted(shared)[:10])}"
            )
        if files:
            raise UserError(f"--aux {aux.name} shares {len(files)} image files with the OOD test set {name}, "
                            f"e.g. {sorted(files)[0]}")  # fmt: skip

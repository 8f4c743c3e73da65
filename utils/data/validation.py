"""Validation data for `--select`: OpenOOD's val lists, or a seeded slice held out of ID train, never a test set.

An openood_* benchmark has its own ID val list and a val OOD list; any other ID set gives a seeded share of each
class of its train split (scores fit on the rest while choosing), against OOD sets the user names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch.utils.data import Subset

from utils.data import openood
from utils.data.registry import DatasetSpec, family, get_spec
from utils.data.splits import DataOptions, LoadedDataset, dataset_identity, labels_of
from utils.errors import UserError


@dataclass
class Validation:
    """The data a choice is made on, and how it was made (for results.json)."""

    id_val: LoadedDataset
    ood_val: list[LoadedDataset]
    split: str
    fit_rows: np.ndarray | None = None  # train positions the scores fit on while choosing (None: all of train)


def named_split(item: str) -> tuple[str, str, DatasetSpec]:
    """`NAME[=SPLIT]` of --select-ood: a set's val split where it has one, else its test split; with its spec."""
    name, _, split = item.partition("=")
    spec = get_spec(name)
    return name, split or ("val" if "val" in spec.splits else "test"), spec


def validation_data(id_spec: DatasetSpec, id_name: str, data: DataOptions, ood: Sequence[str], holdout: float,
                    test_sets: Sequence[LoadedDataset], resize: int | None = None,
                    train: LoadedDataset | None = None) -> Validation:  # fmt: skip
    """ID and OOD validation sets: OpenOOD's lists for an openood_* benchmark (unless `ood` names others), else a
    `holdout` share of the ID train split (`train`, where loaded already) against the named `ood` sets, brought to
    `resize` as the test OOD sets are (the ID benchmark's protocol); a test set is refused as validation data."""
    bench = openood.BENCHMARKS.get(id_name)
    if ood:
        ood_val = []
        for item in ood:
            name, split, spec = named_split(item)
            ood_val.append(data.load(name, split, resize=resize, spec=spec))
    elif bench is not None:
        ood_val = [data.load(openood.ood_name(id_name, bench.val_ood), "val")]
    else:
        raise UserError(f"--select needs OOD validation data for '{id_name}': name one or more sets with "
                        f"--select-ood NAME[=SPLIT] (never a test set; e.g. digits_aux for digits)")  # fmt: skip
    _refuse_test_sets(ood_val, test_sets)
    against = ", ".join(f"{d.name} ({d.split})" for d in ood_val)
    if "val" in id_spec.splits:
        return Validation(data.load(id_name, "val", spec=id_spec), ood_val, f"{id_name} val split vs {against}")
    if "train" not in id_spec.splits:
        raise UserError(f"--select holds out part of the ID train split, and '{id_name}' has none")
    if not 0 < holdout < 1:
        raise UserError(f"--select-holdout must lie strictly between 0 and 1, got {holdout}")
    train = train or data.load_id_train(id_name, id_spec)
    count = len(train.dataset)
    held = _held_out(train, holdout, data.seed)
    subset = Subset(train.dataset, held.tolist())
    id_val = replace(train, dataset=subset, identity=f"{id_name}|train|{dataset_identity(subset)}")
    return Validation(id_val, ood_val, f"{id_name} train, {len(held)} of {count} held out (seed {data.seed}) vs "
                      f"{against}", fit_rows=np.setdiff1d(np.arange(count), held))  # fmt: skip


def _refuse_test_sets(ood_val: Sequence[LoadedDataset], test_sets: Sequence[LoadedDataset]) -> None:
    """A validation set may not be a test set (same name and split: a capped or resized copy still is), nor share a
    source with one under another name (cifar100 and openood_cifar10:cifar100), whose splits we cannot compare."""
    for data in ood_val:
        for test in test_sets:
            same = (data.name, data.split) == (test.name, test.split)
            if same or (data.name != test.name and family(data.name) == family(test.name)):
                why = "is" if same else f"holds images from the same source ({family(data.name)}) as"
                raise UserError(f"--select-ood {data.name} ({data.split}) {why} the test set {test.name} "
                                f"({test.split}): choosing on it would tune on the test")  # fmt: skip


def _held_out(train: LoadedDataset, share: float, seed: int) -> np.ndarray:
    """Sorted train positions held out: `share` of each class (seeded), each class keeping at least one image to
    fit on (a few-shot split stays whole per class); unlabelled train sets are drawn from as one."""
    try:
        labels = labels_of(train.dataset)
    except UserError:
        labels = np.zeros(len(train.dataset), dtype=np.int64)
    rng, held = np.random.default_rng(seed), []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        held += members[rng.permutation(len(members))[: min(round(share * len(members)), len(members) - 1)]].tolist()
    if not held:
        raise UserError(
            f"--select-holdout {share} of {train.name}'s train split holds out no image (classes of "
            f"{np.bincount(np.unique(labels, return_inverse=True)[1]).max()} images at most)"
        )
    return np.sort(np.asarray(held, dtype=np.int64))

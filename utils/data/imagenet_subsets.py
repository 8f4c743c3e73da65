"""Building ImageNet subsets (ImageNet-10/20/100) from an ImageNet-1k tree: discovery, links, manifest, captions."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from utils.data import classnames as names
from utils.atomic import atomic_path
from utils.data.folder import IMAGE_SUFFIXES
from utils.errors import UserError
from utils.prompts import Template, render

SUBSETS: dict[tuple[str, str], Callable[[], dict[str, str]]] = {
    ("imagenet10", "seed"): lambda: names.IMAGENET10,
    ("imagenet10", "mcm"): lambda: names.IMAGENET10_MCM,
    ("imagenet20", "seed"): lambda: names.IMAGENET20,
    ("imagenet100", "seed"): names.imagenet100,
}
SPLITS = ("train", "val")
KAGGLE_VAL_LABELS = "LOC_val_solution.csv"


def subset_classes(subset: str, variant: str) -> dict[str, str]:
    """wnid -> class name of a subset; the `mcm` variant exists for ImageNet-10 only."""
    if (subset, variant) not in SUBSETS:
        valid = ", ".join(f"{s}/{v}" for s, v in SUBSETS)
        raise UserError(f"no {variant!r} variant of {subset}; choose one of {valid}")
    return SUBSETS[(subset, variant)]()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _val_labels(source: Path, labels_file: Path | None) -> dict[str, str]:
    """Image stem -> wnid for the official flat validation folder, from Kaggle's LOC_val_solution.csv."""
    path = labels_file or source / KAGGLE_VAL_LABELS
    if not path.is_file():
        raise UserError(
            f"{source / 'val'} is the flat official layout (50,000 images, no class folders) and no labels file was "
            f"found ({path}). Pass --val-labels LOC_val_solution.csv (ImageId,PredictionString with the wnid first), "
            f"or reorganise val/ into val/<wnid>/ folders first (e.g. with the widely used valprep.sh script)"
        )
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(handle)}
    except (KeyError, IndexError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} is not a LOC_val_solution.csv (columns ImageId,PredictionString): {err!r}") from err


def find_images(
    source: Path, split: str, wnids: Sequence[str], labels_file: Path | None = None
) -> dict[str, list[Path]]:
    """The source images of each wanted wnid in one split; a missing wnid fails before anything is created."""
    root = source / split
    if not root.is_dir():
        raise UserError(f"{root} not found: --imagenet-root needs train/ and val/ folders (ImageNet-1k, by wnid)")
    if split == "val" and not any(d.is_dir() for d in root.iterdir()):
        by_wnid: dict[str, list[Path]] = {w: [] for w in wnids}
        labels = _val_labels(source, labels_file)
        for image in _images(root):
            wnid = labels.get(image.stem)
            if wnid in by_wnid:
                by_wnid[wnid].append(image)
    else:
        by_wnid = {w: _images(root / w) if (root / w).is_dir() else [] for w in wnids}
    missing = [w for w in wnids if not by_wnid[w]]
    if missing:
        raise UserError(f"{root} has no images for {len(missing)} of the {len(wnids)} wnids: {', '.join(missing)}")
    return by_wnid


def place(source: Path, target: Path, copy: bool) -> bool:
    """Link (or copy) one image; an existing target is left alone (reruns finish what is missing). True if made."""
    if target.is_symlink() and not target.exists():
        target.unlink()  # a dangling link (the source moved): make it again
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)
    else:
        os.symlink(source.resolve(), target)
    return True


def caption_records(
    images: dict[str, list[Path]], classes: dict[str, str], templates: Sequence[Template], per_image: int, seed: int
) -> list[dict]:
    """Captions from class names through templates: one record per training image, deterministic with `seed`."""
    rng = np.random.default_rng(seed)
    order = sorted(classes)
    records = []
    for label, wnid in enumerate(order):
        for image in images[wnid]:
            picks = rng.choice(len(templates), size=min(per_image, len(templates)), replace=False)
            captions = [render([templates[int(k)]], classes[wnid])[0] for k in picks]
            records.append({"image": f"train/{wnid}/{image.name}", "wnid": wnid, "label": label, "captions": captions})
    return records


def write_manifest(path: Path, classes: dict[str, str], counts: dict[str, dict[str, int]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["wnid", "class_name", "train_images", "val_images"])
    for wnid in sorted(classes):
        writer.writerow([wnid, classes[wnid], counts["train"][wnid], counts["val"][wnid]])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))

"""Images in a folder: an ImageFolder tree (one sub-folder per class) or a flat folder of images."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from utils.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}


def _images_under(folder: Path) -> list[Path]:
    """Image files below `folder`, sorted; hidden files and folders (.ipynb_checkpoints, ._x.jpg) are not images."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )  # fmt: skip


class ImageFiles:
    """(PIL RGB image, label) pairs from files on disk.

    With `classes` (sub-folder names, e.g. wnids) each listed sub-folder is a class, in the given order.
    Without, every sub-folder holding images is a class (sorted) when there are at least two; a flat folder, or
    one with a single image sub-folder (the benchmark tarballs: iNaturalist/images/, LSUN/test/,
    iSUN/iSUN_patches/), is one unlabelled set (label -1), as is any tree with `labelled=False`.

    Map-style (`__getitem__`, `__len__`: all that DataLoader, Subset and ConcatDataset ask) without torch's Dataset
    base, as the other datasets here: the registry (--list-datasets, --help) then imports no torch.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None, labelled: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"image folder not found: {self.root}")
        if not labelled:
            classes = []
        elif classes is None:
            subdirs = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
            classes = [d for d in subdirs if _images_under(self.root / d)]
            top_level = [p for p in _images_under(self.root) if p.parent == self.root]
            if top_level and classes:
                warnings.warn(
                    f"{self.root} has {len(top_level)} images beside its class folders ({top_level[0].name}, ...): "
                    f"it is read as one unlabelled set; move them into a class folder to keep the labels",
                    stacklevel=2,
                )
            if top_level or len(classes) < 2:  # one folder is a container, not a class
                classes = []
        else:
            missing = [c for c in classes if not (self.root / c).is_dir()]
            if missing:
                raise UserError(f"{self.root} lacks the class folders {', '.join(missing[:10])}"
                                f"{' ...' if len(missing) > 10 else ''} ({len(missing)} of {len(classes)} missing)")
        self.classes = list(classes)
        if self.classes:
            self.samples = [(p, k) for k, c in enumerate(self.classes) for p in _images_under(self.root / c)]
        else:
            self.samples = [(p, -1) for p in _images_under(self.root)]
        if not self.samples:
            raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")

    @classmethod
    def listed(cls, root: str | Path, samples: Sequence[tuple[Path, int]], classes: Sequence[str] = (),
               classnames: Sequence[str] | None = None) -> ImageFiles:  # fmt: skip
        """The files a list names (an OpenOOD image list), in its order, with its labels (-1: unlabelled);
        `classnames`, where given, are the prompt names of `classes` as they are."""
        dataset = cls.__new__(cls)
        dataset.root, dataset.classes = Path(root), list(classes)
        dataset.samples = [(path if isinstance(path, Path) else Path(path), label) for path, label in samples]
        if classnames is not None:
            dataset.classnames = list(classnames)
        if not dataset.samples:
            raise UserError(f"the image list for {root} names no images")
        return dataset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return image.convert("RGB"), label

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])

    def fingerprint(self) -> str:
        """Changes when the folder moves or files are added, removed, renamed or rewritten (size, mtime)."""
        digest = hashlib.blake2b(os.fsencode(self.root.resolve()), digest_size=8)
        for path, label in self.samples:
            try:
                stat = path.stat()
                signature = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:  # a broken link: skipped at load time, but its presence is part of the identity
                signature = "missing"
            name = path.relative_to(self.root) if path.is_relative_to(self.root) else path  # listed from elsewhere
            digest.update(os.fsencode(name) + f":{label}:{signature}\n".encode())
        return digest.hexdigest()

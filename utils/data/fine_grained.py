"""Fine-grained ID sets: MCM's CUB-200, Stanford Cars, Food-101, Oxford-IIIT Pet; CLIP's Flowers-102, FGVC-Aircraft.

torchvision's loaders where they exist, CUB-200-2011 from its own files.

Class names are the ones MCM (deeplearning-wisc/MCM ea7130f, dataloaders/) or CLIP (openai/CLIP data/prompts.md)
prompt with, in the dataset's label order. CLIP's tokenizer lower-cases, so MCM's capitalised names and CLIP's
lower-case ones are the same prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING


from utils.data.classnames import RESOURCES
from utils.data.folder import ImageFiles
from utils.errors import UserError

if TYPE_CHECKING:
    from torch.utils.data import Dataset  # the datasets are map-style: this module imports no torch

CUB = "CUB_200_2011"


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise UserError(f"{path} is missing (CUB-200-2011 unpacks images.txt, image_class_labels.txt, "
                        f"train_test_split.txt, classes.txt and images/ into {path.parent})")  # fmt: skip
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def cub200(root: Path, split: str, download: bool) -> ImageFiles:
    """CUB-200-2011 as MCM's dataloaders/bird200.py: the images whose train_test_split flag matches, in images.txt
    order, label = class id - 1; names from classes.txt ('001.Black_footed_Albatross' -> 'Black footed Albatross')."""
    base = root / CUB
    try:
        classes = [name for _, name in _rows(base / "classes.txt")]
        labels = {image: int(label) - 1 for image, label in _rows(base / "image_class_labels.txt")}
        training = {image: flag == "1" for image, flag in _rows(base / "train_test_split.txt")}
        samples = [(base / "images" / path, labels[image]) for image, path in _rows(base / "images.txt")
                   if training[image] == (split == "train")]  # fmt: skip
        names = [name.split(".", 1)[1].replace("_", " ") for name in classes]
    except (KeyError, ValueError, IndexError) as err:  # a line of one file without its match in another
        raise UserError(f"the CUB-200-2011 files in {base} do not agree ({type(err).__name__}: {err}); unpack "
                        f"CUB_200_2011.tgz again") from err  # fmt: skip
    if bad := sorted({label for _, label in samples if not 0 <= label < len(classes)}):
        raise UserError(f"{base / 'image_class_labels.txt'} has class ids {[b + 1 for b in bad[:5]]} beyond "
                        f"classes.txt's {len(classes)}")  # fmt: skip
    return ImageFiles.listed(base / "images", samples, classes, names)


def torchvision_set(cls_name: str, splits: dict[str, str], verbatim: bool = True, download: bool = True,
                    **kwargs: object) -> Callable[[Path, str, bool], Dataset]:  # fmt: skip
    """A torchvision dataset by our split names (`splits`: ours -> torchvision's); `verbatim` keeps its class names
    as they are ('Ram C/V Cargo Van Minivan 2012', 'F/A-18' would not survive folder-name cleaning). `download`
    False where torchvision's download is dead (StanfordCars raises ValueError whenever it is asked to)."""

    def build(root: Path, split: str, allowed: bool) -> Dataset:
        import torchvision.datasets as tvd

        try:
            dataset = getattr(tvd, cls_name)(str(root), split=splits[split], download=allowed and download, **kwargs)
        except ValueError as err:  # torchvision's way of refusing a download
            raise UserError(str(err)) from err
        if verbatim:
            dataset.classnames = list(dataset.classes)
        return dataset

    return build


@lru_cache(maxsize=1)
def flowers102_clip() -> tuple[str, ...]:
    """CLIP's 102 flower names (data/prompts.md), in Flowers-102's label order; torchvision 0.29's own list differs
    at three (globe-flower, pink-yellow dahlia?, ball moss)."""
    return tuple((RESOURCES / "flowers102_clip.txt").read_text().splitlines())

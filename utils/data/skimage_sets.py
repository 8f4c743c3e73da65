"""Far-OOD sets from images that ship with scikit-image: face crops (LFW subset) and texture patches."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

IMAGE_SIZE = 32
PATCH, STRIDE = 32, 64
TEXTURES = ("brick", "grass", "gravel")


class ArrayImages(Dataset):
    """Grey uint8 arrays [N, H, W] with labels, served as 32 x 32 RGB PIL images."""

    def __init__(self, arrays: np.ndarray, labels: Sequence[int], classes: Sequence[str], name: str):
        self.arrays, self.labels, self.classes, self.name = arrays, list(labels), list(classes), name

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.arrays[index], mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        return image.convert("RGB"), self.labels[index]

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def fingerprint(self) -> str:
        return hashlib.blake2b(self.arrays.tobytes(), digest_size=8).hexdigest()


def faces() -> ArrayImages:
    """The 100 face crops of scikit-image's LFW subset (25 x 25 grey)."""
    import skimage.data

    crops = np.round(skimage.data.lfw_subset()[:100] * 255).astype(np.uint8)
    return ArrayImages(crops, [0] * len(crops), ["face"], "faces")


def texture_patches() -> ArrayImages:
    """32 x 32 patches on a 64-pixel grid of scikit-image's brick, grass and gravel photos (64 each)."""
    import skimage.data

    patches, labels = [], []
    for label, name in enumerate(TEXTURES):
        image = getattr(skimage.data, name)()
        for top in range(0, image.shape[0] - PATCH + 1, STRIDE):
            for left in range(0, image.shape[1] - PATCH + 1, STRIDE):
                patches.append(image[top : top + PATCH, left : left + PATCH])
                labels.append(label)
    return ArrayImages(np.stack(patches).astype(np.uint8), labels, list(TEXTURES), "skimage_textures")

"""Images that ship with scikit-image: far-OOD sets (face crops, texture patches) and the playground's photos."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
PATCH, STRIDE = 32, 64
TEXTURES = ("brick", "grass", "gravel")


class ArrayImages:
    """Grey uint8 arrays [N, H, W] with labels, served as 32 x 32 RGB PIL images (map-style, as ImageFiles)."""

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

def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _data(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


# name -> (loader, description)
SKIMAGE_IMAGES: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "astronaut": (_data("astronaut"), "an astronaut in a spacesuit posing in front of a flag"),
    "camera": (_data("camera"), "a black and white photo of a man with a camera on a tripod"),
    "chelsea": (_data("chelsea"), "a close-up photo of a tabby cat's face"),
    "coffee": (_data("coffee"), "a cup of coffee on a saucer seen from above"),
    "horse": (_data("horse"), "the black silhouette of a horse on a white background"),
    "motorcycle": (_motorcycle, "a red motorcycle parked in a workshop"),
    "page": (_data("page"), "a scanned page of printed text"),
    "rocket": (_data("rocket"), "a rocket on its launch pad"),
    "coins": (_data("coins"), "old coins lying on a dark surface"),
    "moon": (_data("moon"), "a grey photo of the surface of the moon"),
}


def to_pil(array: np.ndarray) -> Image.Image:
    """Any scikit-image array (grey, boolean, RGB, RGBA) as an RGB PIL image."""
    if array.dtype == bool:
        array = np.where(array, 0, 255).astype(np.uint8)  # skimage's horse: True = the figure, shown black
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def skimage_images(names: list[str] | None = None) -> tuple[list[str], list[Image.Image], list[str]]:
    """(names, RGB images, descriptions) of the chosen playground images (all by default)."""
    names = names or list(SKIMAGE_IMAGES)
    unknown = [n for n in names if n not in SKIMAGE_IMAGES]
    if unknown:
        raise ValueError(f"unknown scikit-image images {unknown}; known: {', '.join(SKIMAGE_IMAGES)}")
    return names, [to_pil(SKIMAGE_IMAGES[n][0]()) for n in names], [SKIMAGE_IMAGES[n][1] for n in names]

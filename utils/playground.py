"""The scikit-image playground: images that ship with scikit-image, each with a short description of our own."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


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

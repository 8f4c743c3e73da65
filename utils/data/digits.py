"""scikit-learn's bundled handwritten digits as small RGB images: an offline stand-in for a real benchmark."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
TEST_FRACTION = 0.3
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 8x8, their digits, and a fixed seeded stratified test mask."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    _, test_idx = train_test_split(
        np.arange(len(data.target)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    is_test = np.zeros(len(data.target), dtype=bool)
    is_test[test_idx] = True
    return images, data.target, is_test


class Digits:
    """The chosen digits of one split, relabelled 0..len(digits)-1, upsampled to 32 x 32 RGB (map-style, as
    ImageFiles)."""

    def __init__(self, split: str, digits: Sequence[int]):
        images, targets, is_test = _digits()
        keep = np.isin(targets, digits) & (is_test if split == "test" else ~is_test)
        self.positions = np.flatnonzero(keep)
        self.images = images
        label_of = {d: k for k, d in enumerate(digits)}
        self.labels = [label_of[int(targets[p])] for p in self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        small = Image.fromarray(self.images[self.positions[index]], mode="L")
        return small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC).convert("RGB"), self.labels[index]

    def describe(self, index: int) -> str:
        return f"digits[{int(self.positions[index])}]"

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(self.positions.astype(np.int64).tobytes(), digest_size=8).hexdigest()
        return f"{TEST_FRACTION}:{SPLIT_SEED}:{IMAGE_SIZE}:{digest}"

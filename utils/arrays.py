"""Array helpers shared by scores, probes and plots: numpy/torch/memmap input, row blocks, normalisation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK = 8192  # rows per block: bounds memory for ImageNet-sized inputs


def as_array(x: object, dtype: type = np.float32) -> np.ndarray:
    """numpy or torch input (memory-mapped float16 too) as a numpy array of `dtype`."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=dtype)


def chunks(features: object, size: int = CHUNK) -> Iterator[np.ndarray]:
    """Consecutive row blocks of `features` as float32 arrays."""
    for start in range(0, len(features), size):
        yield as_array(features[start : start + size])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

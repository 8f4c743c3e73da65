"""Array helpers shared by scores, probes and plots: numpy/torch/memmap input, row blocks, normalisation, softmax."""

from __future__ import annotations

import mmap
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
    for block in row_blocks(features, size):
        yield as_array(block)


def row_blocks(features: object, size: int = CHUNK) -> Iterator[np.ndarray]:
    """Consecutive row blocks of `features` in their own dtype.

    A read-only memory map is streamed, not accumulated: the pages of each block are dropped from this process
    once it is used (the data stays on disk and in the OS page cache), so scanning a bank larger than RAM never
    grows the resident memory by the bank's size.
    """
    mapping = getattr(features, "_mmap", None) if getattr(features, "mode", None) == "r" else None
    for start in range(0, len(features), size):
        yield features[start : start + size]
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = 1 / (1 + e^−x) in float64, without overflow for any x (the probability behind a log-odds)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by each row's maximum (exact for any logit size)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def logsumexp(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """log Σ exp along `axis` (row-wise by default), shifted by the maximum; −inf where every entry is −inf."""
    top = logits.max(axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis=axis) + np.log(np.exp(logits - top).sum(axis=axis))

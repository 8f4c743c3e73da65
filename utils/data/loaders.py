"""Batched, preprocessed loading that survives unreadable images: they are skipped and reported, never fatal."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

# What a corrupt, truncated or non-image file raises while decoding.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# OSErrors that say nothing about the file (too many open files, I/O hiccups): never recorded as a skipped image.
TRANSIENT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EIO, errno.EAGAIN, errno.ENOMEM, errno.EINTR, errno.ESTALE,
                    errno.ETIMEDOUT}  # fmt: skip


class Preprocessed(Dataset):
    """Applies `transform` to a (PIL image, label) dataset; a file that cannot be decoded yields an error note."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int, str | None]:
        try:
            image, label = self.base[index]
            return self.transform(image), int(label), index, None
        except DECODE_ERRORS as err:
            if isinstance(err, OSError) and err.errno in TRANSIENT_ERRNOS:
                raise  # a passing system condition, not a bad file: fail now rather than skip it for good
            return None, -1, index, f"{type(err).__name__}: {err}"


@dataclass
class Batch:
    images: torch.Tensor | None  # None when every image in the batch failed
    labels: torch.Tensor
    indices: torch.Tensor  # positions in the dataset of the images that loaded
    failures: list[tuple[int, str]]  # (position, error) of those that did not


def collate(items: list[tuple[torch.Tensor | None, int, int, str | None]]) -> Batch:
    good = [item for item in items if item[3] is None]
    return Batch(
        images=torch.stack([item[0] for item in good]) if good else None,
        labels=torch.tensor([item[1] for item in good], dtype=torch.long),
        indices=torch.tensor([item[2] for item in good], dtype=torch.long),
        failures=[(item[2], item[3]) for item in items if item[3] is not None],
    )


def make_loader(
    dataset: Dataset,
    transform: Callable,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A loader of `Batch`es: in dataset order (as the cache stores features) unless `shuffle` (seeded) or a sampler;
    `drop_last` leaves out a last, short batch."""
    return DataLoader(
        Preprocessed(dataset, transform),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed) if shuffle or sampler is not None else None,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_yield_to_the_model if workers > 0 else None,
    )


LOADER_NICENESS = 10


def _yield_to_the_model(_: int) -> None:
    """Loader processes run at a lower priority: where cores are few they fill the model's idle gaps instead of
    preempting its threads (bench/extraction.py measures the difference); with cores to spare it changes nothing."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no os.nice on this platform
        os.nice(LOADER_NICENESS)


def sample_name(dataset: Dataset, index: int) -> str:
    """A human-readable name (usually the file path) of item `index`, through Subset and ConcatDataset."""
    if isinstance(dataset, Subset):
        return sample_name(dataset.dataset, int(dataset.indices[index]))
    if isinstance(dataset, ConcatDataset):
        part = next(k for k, end in enumerate(dataset.cumulative_sizes) if index < end)
        offset = dataset.cumulative_sizes[part - 1] if part else 0
        return sample_name(dataset.datasets[part], index - offset)
    if hasattr(dataset, "describe"):
        return dataset.describe(index)
    for attr in ("samples", "imgs", "_image_files"):
        items = getattr(dataset, attr, None)
        if items is not None:
            item = items[index]
            return str(item[0] if isinstance(item, tuple) else item)
    return f"item {index}"

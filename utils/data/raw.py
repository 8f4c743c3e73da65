"""Images as they lie on disk, for the tensor pipeline: loader workers read a JPEG file's bytes (anything else they
decode to uint8 pixels, never float32), and the run's device decodes the JPEGs of a batch at once (nvJPEG on CUDA).

A JPEG the batched decoder refuses (CMYK, or progressive where unsupported) is decoded by PIL, that image alone;
a file nothing can decode is skipped and reported exactly as in the PIL pipeline.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import DTD

from utils.data.folder import ImageFiles
from utils.data.loaders import DECODE_ERRORS, TRANSIENT_ERRNOS, _yield_to_the_model

JPEG_MAGIC, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
Item = tuple[str, torch.Tensor | None, int, int, str | None]  # (kind, data, label, position, error)


def _file_of(dataset: Dataset, index: int) -> tuple[str, int] | None:
    """(path, label) when item `index` is a plain image file read as it is; None when the dataset makes the image
    (in memory, or changed after reading: a resize), which then comes through its own __getitem__."""
    if isinstance(dataset, Subset):
        return _file_of(dataset.dataset, int(dataset.indices[index]))
    if isinstance(dataset, ConcatDataset):
        part = next(k for k, end in enumerate(dataset.cumulative_sizes) if index < end)
        return _file_of(dataset.datasets[part], index - (dataset.cumulative_sizes[part - 1] if part else 0))
    if getattr(dataset, "transform", None) is not None:
        return None
    if isinstance(dataset, ImageFiles):
        path, label = dataset.samples[index]
        return str(path), int(label)
    if isinstance(dataset, DTD):  # torchvision's: a list of files, read with PIL and nothing else
        return str(dataset._image_files[index]), int(dataset._labels[index])
    return None


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


class RawImages(Dataset):
    """Items ("jpeg", file bytes) or ("pixels", uint8 [3, H, W]) of a (PIL image, label) dataset."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Item:
        try:
            found = _file_of(self.base, index)
            if found is None:
                image, label = self.base[index]
                return "pixels", _pixels(image), int(label), index, None
            path, label = found
            data = Path(path).read_bytes()
            if data[:3] == JPEG_MAGIC and data.rstrip(b"\0\n\r ").endswith(JPEG_END):  # whole JPEGs only: PIL
                # decides what a truncated file is (an error), as in the PIL pipeline
                return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), label, index, None
            with Image.open(io.BytesIO(data)) as image:
                return "pixels", _pixels(image), label, index, None
        except DECODE_ERRORS as err:
            if isinstance(err, OSError) and err.errno in TRANSIENT_ERRNOS:
                raise
            return "failed", None, -1, index, f"{type(err).__name__}: {err}"


@dataclass
class RawBatch:
    items: list[Item]

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [(item[3], item[4]) for item in self.items if item[4] is not None]


def make_raw_loader(dataset: Dataset, batch_size: int, workers: int, sampler: Sampler | None = None) -> DataLoader:
    """Batches of undecoded items, in dataset order (or the sampler's)."""
    return DataLoader(
        RawImages(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=RawBatch,
        prefetch_factor=2 if workers > 0 else None, worker_init_fn=_yield_to_the_model if workers > 0 else None,
    )  # fmt: skip


def decode_batch(
    batch: RawBatch, device: torch.device
) -> tuple[list[torch.Tensor], list[int], list[int], list[tuple[int, str]]]:
    """uint8 RGB images [3, H, W] on `device`, their labels and positions, and the positions that failed (error)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images: dict[int, torch.Tensor] = {}
    failures = list(batch.failures)
    jpegs = [k for k, item in enumerate(batch.items) if item[0] == "jpeg"]
    if jpegs:
        try:
            decoded = decode_jpeg([batch.items[k][1] for k in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one image the batched decoder refuses fails the batch: decode them one by one
            decoded = [None] * len(jpegs)
        for k, image in zip(jpegs, decoded, strict=True):
            image = image if image is not None else _one_jpeg(batch.items[k][1], device)
            if isinstance(image, str):
                failures.append((batch.items[k][3], image))
            else:
                images[k] = image
    for k, item in enumerate(batch.items):
        if item[0] == "pixels":
            images[k] = item[1].to(device, non_blocking=True)
    kept = sorted(images)
    return [images[k] for k in kept], [batch.items[k][2] for k in kept], [batch.items[k][3] for k in kept], failures


def _one_jpeg(data: torch.Tensor, device: torch.device) -> torch.Tensor | str:
    """One JPEG by the batched decoder, else by PIL (CMYK, progressive where unsupported); an error if neither can."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            return _pixels(image).to(device)
    except DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"

"""Image features through the cache: extract once per (weights, preprocessing, dataset, split, subset, dtype)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.arrays import as_array
from utils.cache import CachedFeatures, FeatureCache, cache_key
from utils.data import LoadedDataset
from utils.data.loading import make_loader, sample_name
from utils.device import autocast, precision_tag
from utils.distributed import World
from utils.errors import UserError
from utils.extraction import ShardWriter, entry_writer
from utils.models import ModelBundle
from utils.prompts import Template, render, text_head

SHOW_FAILURES = 5


def feature_key(bundle: ModelBundle, data: LoadedDataset, dtype: str) -> str:
    """Everything that decides the cached features; the weights enter by content, not by name."""
    return cache_key(
        {
            "model": bundle.name,
            "architecture": bundle.architecture,  # activation etc.: QuickGELU and GELU share weights, not features
            "weights": bundle.fingerprint,
            "precision": precision_tag(bundle.device),
            "preprocess": describe_transform(bundle.preprocess),
            "dataset": data.identity,
            "dtype": dtype,
        }
    )


def describe_transform(transform: object) -> str:
    """Every step of a preprocessing pipeline with all its settings (repr alone hides some, e.g. fill colours)."""
    steps = getattr(transform, "transforms", [transform])
    return repr([(type(t).__name__, sorted((k, repr(v)) for k, v in vars(t).items() if not k.startswith("_")))
                 for t in steps])  # fmt: skip


def _warn_skipped(data: LoadedDataset, skipped: list[dict[str, str]], total: int) -> None:
    if skipped:
        shown = "; ".join(f"{s['name']} ({s['error']})" for s in skipped[:SHOW_FAILURES])
        more = f" and {len(skipped) - SHOW_FAILURES} more" if len(skipped) > SHOW_FAILURES else ""
        warnings.warn(
            f"{data.name}/{data.split}: skipped {len(skipped)} of {total} images that could not be read: {shown}{more}",
            stacklevel=3,
        )


@torch.no_grad()
def extract(
    bundle: ModelBundle,
    data: LoadedDataset,
    cache: FeatureCache,
    key: str,
    batch_size: int = 256,
    workers: int = 4,
    world: World | None = None,
) -> None:
    """Encode every image of `data` and stream the normalised features into the cache, resumably.

    With a distributed `world` (torchrun), every rank must call this: each encodes its own contiguous shard into
    one shared file and rank 0 publishes the entry (the cache folder must be one all ranks see).
    """
    world = world or World()
    spec = {"rows": len(data.dataset), "dim": bundle.embed_dim, "dtype": cache.dtype, "batch_size": batch_size,
            "world_size": world.size}  # fmt: skip
    meta = {"model": bundle.name, "weights": bundle.weights, "dataset": data.identity, "classnames": data.classnames}
    with entry_writer(cache, key, spec, meta, world, f"the features of {data.name}/{data.split}") as shard:
        if shard is not None:
            _encode(bundle, data, shard, batch_size, workers, show=world.main)


def _encode(bundle: ModelBundle, data: LoadedDataset, shard: ShardWriter, batch_size: int, workers: int,
            show: bool) -> None:  # fmt: skip
    rows = range(shard.next_row, shard.rows.stop)
    loader = make_loader(data.dataset, bundle.preprocess, batch_size, workers, sampler=rows,
                         pin_memory=bundle.device.type == "cuda")  # fmt: skip
    total, initial = len(shard.rows), shard.done
    with tqdm(total=total, initial=initial, unit="img", desc=f"features {data.name}/{data.split}",
              dynamic_ncols=True, disable=not show) as bar:  # fmt: skip
        for batch in loader:
            skipped = [{"name": sample_name(data.dataset, i), "error": e} for i, e in batch.failures]
            count = len(batch.indices) + len(batch.failures)
            if batch.images is None:
                shard.write(np.zeros(0, np.int64), np.zeros((0, bundle.embed_dim)), np.zeros(0), count, skipped)
            else:
                with autocast(bundle.device):
                    out = bundle.model.encode_image(batch.images.to(bundle.device, non_blocking=True))
                out = F.normalize(out.float(), dim=-1).cpu().numpy()
                shard.write(batch.indices.numpy(), out, batch.labels.numpy(), count, skipped)
            bar.update(count)


def image_features(
    bundle: ModelBundle,
    data: LoadedDataset,
    cache: FeatureCache,
    batch_size: int = 256,
    workers: int = 4,
    world: World | None = None,
) -> CachedFeatures:
    """The dataset's features from the cache, extracting them first if needed (on every rank of `world`)."""
    key = feature_key(bundle, data, cache.dtype)
    entry = cache.load(key)
    if entry is None or (world is not None and world.distributed):  # every rank joins, even where it is cached
        extract(bundle, data, cache, key, batch_size, workers, world)
        entry = cache.load(key)
        if entry is None:
            raise RuntimeError(f"feature cache entry {cache.path(key)} did not load right after writing it")
    _warn_skipped(data, entry.skipped, len(data.dataset))
    if len(entry.index) == 0:
        first = entry.skipped[0] if entry.skipped else {"name": "?", "error": "?"}
        raise UserError(
            f"{data.name}/{data.split}: none of its {len(data.dataset)} images could be read "
            f"(first: {first['name']}: {first['error']})"
        )
    return entry


def text_features(
    bundle: ModelBundle,
    names: Sequence[str],
    templates: Sequence[Template],
    cache: FeatureCache,
    classes_per_batch: int = 4096,
) -> np.ndarray:
    """Template-averaged, L2-normalised text embeddings of many names (e.g. a word list), cached like images."""
    if not bundle.has_text:
        raise UserError(f"{bundle.name} has no text encoder")
    digest = hashlib.blake2b("\n".join(names).encode(), digest_size=16).hexdigest()
    key = cache_key(
        {
            "model": bundle.name,
            "weights": bundle.fingerprint,
            "text": digest,
            "templates": render(templates, "{}"),
            "dtype": cache.dtype,
        }
    )
    entry = cache.load(key)
    if entry is None:
        spec = {"rows": len(names), "dim": bundle.embed_dim, "dtype": cache.dtype, "batch_size": classes_per_batch,
                "world_size": 1}  # fmt: skip
        meta = {"model": bundle.name, "weights": bundle.weights, "text_count": len(names)}
        with (
            entry_writer(cache, key, spec, meta, World(), "the text features") as shard,
            tqdm(total=len(names), unit="name", desc="text features", dynamic_ncols=True) as bar,
        ):
            for start in range(shard.next_row if shard else len(names), len(names), classes_per_batch):
                batch = list(names[start : start + classes_per_batch])
                head = text_head(bundle.model, bundle.tokenizer, batch, templates, bundle.device).cpu().numpy()
                shard.write(np.arange(start, start + len(batch)), head, np.full(len(batch), -1), len(batch), [])
                bar.update(len(batch))
        entry = cache.load(key)
    return as_array(entry.features)

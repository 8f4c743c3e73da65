"""Image features through the cache: extracted once per (view, weights, preprocessing, dataset, split, dtype).

A *view* is which features of an image are kept: today the pooled, projected embedding (`global`); patch-level
views add an entry to VIEWS and get the same cache, resume and sharding.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.data.loaders import make_loader, sample_name
from utils.data.raw import decode_batch, make_raw_loader
from utils.data.splits import LoadedDataset
from utils.device import PIPELINES, autocast, precision_tag
from utils.distributed import World
from utils.errors import UserError
from utils.features.store import CachedFeatures, FeatureCache, cache_key
from utils.features.writer import ShardWriter, entry_writer
from utils.models.loading import ModelBundle
from utils.models.local_tokens import global_and_patches, patch_count
from utils.models.preprocess import TensorPreprocess

SHOW_FAILURES = 5
DEFAULT_VIEW = "global"


Reader = Callable[[CachedFeatures, ModelBundle], CachedFeatures]


@dataclass(frozen=True)
class View:
    """One kind of image feature: how a batch is encoded into rows of `tokens` embeddings, each L2-normalised;
    `within`: the views that hold this one, and how it is read out of them (no second pass through the model)."""

    encode: Callable[[ModelBundle, torch.Tensor], torch.Tensor]  # (bundle, images) -> [B, tokens, D], unnormalised
    tokens: Callable[[ModelBundle], int]
    description: str
    within: dict[str, Reader] = field(default_factory=dict)

    def dim(self, bundle: ModelBundle) -> int:
        return self.tokens(bundle) * bundle.embed_dim


def _global_and_local(bundle: ModelBundle, images: torch.Tensor) -> torch.Tensor:
    pooled, patches = global_and_patches(bundle.model.visual, images)
    return torch.cat([pooled[:, None], patches], dim=1)


def first_token(entry: CachedFeatures, dim: int) -> CachedFeatures:
    """The first token of every row of a multi-token view (the local view's global embedding), in memory."""
    rows = np.empty((len(entry.features), dim), dtype=entry.features.dtype)
    for start in range(0, len(rows), 65536):
        rows[start : start + 65536] = entry.features[start : start + 65536, :dim]
    return CachedFeatures(rows, entry.labels, entry.index, entry.meta)


VIEWS: dict[str, View] = {
    DEFAULT_VIEW: View(
        encode=lambda bundle, images: bundle.model.encode_image(images)[:, None],
        tokens=lambda bundle: 1,
        description="the pooled, projected image embedding (CLIP's image feature)",
        within={"local": lambda entry, bundle: first_token(entry, bundle.embed_dim)},
    ),
    "local": View(
        encode=_global_and_local,
        tokens=lambda bundle: 1 + patch_count(getattr(bundle.model, "visual", None)),
        description="the global embedding, then every projected patch token (GL-MCM's value path of the last block)",
    ),
}


def view_sources(views: list[str]) -> dict[str, str]:
    """For each of `views`, the view that is encoded to get it: itself, or one of `views` that holds it."""
    return {view: next((held for held in VIEWS[view].within if held in views), view) for view in views}


def get_view(name: str) -> View:
    if name not in VIEWS:
        raise UserError(f"unknown feature view '{name}'; known: {', '.join(VIEWS)}")
    return VIEWS[name]


def feature_key(bundle: ModelBundle, data: LoadedDataset, dtype: str, view: str = DEFAULT_VIEW) -> str:
    """Everything that decides the cached features; the weights enter by content, not by name.

    The default view adds nothing to the key, so entries cached before views existed stay valid.
    """
    return cache_key(
        {
            **({} if view == DEFAULT_VIEW else {"view": view}),
            "model": bundle.name,
            "architecture": bundle.architecture,  # activation etc.: QuickGELU and GELU share weights, not features
            "weights": bundle.fingerprint,
            "precision": precision_tag(bundle.device, bundle.precision),
            **({"pipeline": "tensor"} if pipeline_of(bundle) == "tensor" else {}),  # PIL: keys as before
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
    view: str = DEFAULT_VIEW,
) -> None:
    """Encode every image of `data` (its `view` features) and stream them, normalised, into the cache, resumably.

    With a distributed `world` (torchrun), every rank must call this: each encodes its own contiguous shard into
    one shared file and rank 0 publishes the entry (the cache folder must be one all ranks see).
    """
    world = world or World()
    encoder = get_view(view)
    tokens = encoder.tokens(bundle)
    if tokens > 1 and world.main:  # patch tokens: hundreds of times a global row
        size = len(data.dataset) * encoder.dim(bundle) * np.dtype(cache.dtype).itemsize
        print(f"{view} features of {data.name}/{data.split}: {len(data.dataset)} images x {tokens} tokens x "
              f"{bundle.embed_dim} = {size / 2**30:.2f} GiB in the cache", file=sys.stderr)  # fmt: skip
    spec = {"rows": len(data.dataset), "dim": encoder.dim(bundle), "dtype": cache.dtype, "batch_size": batch_size,
            "world_size": world.size}  # fmt: skip
    meta = {"model": bundle.name, "weights": bundle.weights, "dataset": data.identity, "classnames": data.classnames,
            "view": view}  # fmt: skip
    with entry_writer(cache, key, spec, meta, world, f"the {view} features of {data.name}/{data.split}") as shard:
        if shard is not None:
            _encode(bundle, encoder, data, shard, batch_size, workers, show=world.main)


def pipeline_of(bundle: ModelBundle) -> str:
    """The image pipeline an extraction uses: `tensor` (bytes to the device, decoded and preprocessed there) or
    `pil` (decoded and preprocessed by the loader workers). `auto`: tensor on CUDA, PIL on CPU (bench/extraction.py
    measures both), PIL wherever the model's transform has a step the tensor pipeline cannot restate."""
    if bundle.pipeline not in PIPELINES:
        raise UserError(f"unknown image pipeline '{bundle.pipeline}'; choose one of {', '.join(PIPELINES)}")
    if bundle.pipeline == "pil" or (bundle.pipeline == "auto" and bundle.device.type != "cuda"):
        return "pil"
    try:
        TensorPreprocess(bundle.preprocess)
    except ValueError as err:
        if bundle.pipeline == "tensor":
            raise UserError(f"--pipeline tensor: {err}; use --pipeline pil") from err
        return "pil"
    return "tensor"


@dataclass
class _Batch:
    images: torch.Tensor | None  # preprocessed, on the model's device; None when every image failed
    labels: np.ndarray
    indices: np.ndarray
    failures: list[tuple[int, str]]


def _pil_batches(bundle: ModelBundle, data: LoadedDataset, rows: range, batch_size: int, workers: int):
    loader = make_loader(data.dataset, bundle.preprocess, batch_size, workers, sampler=rows,
                         pin_memory=bundle.device.type == "cuda")  # fmt: skip
    for batch in loader:
        images = None if batch.images is None else batch.images.to(bundle.device, non_blocking=True)
        yield _Batch(images, batch.labels.numpy(), batch.indices.numpy(), batch.failures)


def _tensor_batches(bundle: ModelBundle, data: LoadedDataset, rows: range, batch_size: int, workers: int):
    preprocess = TensorPreprocess(bundle.preprocess)
    for raw in make_raw_loader(data.dataset, batch_size, workers, sampler=rows):
        images, labels, indices, failures = decode_batch(raw, bundle.device)
        batch = preprocess(images) if images else None
        yield _Batch(batch, np.asarray(labels, np.int64), np.asarray(indices, np.int64), failures)


def _encode(bundle: ModelBundle, encoder: View, data: LoadedDataset, shard: ShardWriter, batch_size: int,
            workers: int, show: bool) -> None:  # fmt: skip
    rows = range(shard.next_row, shard.rows.stop)
    batches = (_tensor_batches if pipeline_of(bundle) == "tensor" else _pil_batches)(
        bundle, data, rows, batch_size, workers
    )
    total, initial = len(shard.rows), shard.done
    with tqdm(total=total, initial=initial, unit="img", desc=f"features {data.name}/{data.split}",
              dynamic_ncols=True, disable=not show) as bar:  # fmt: skip
        for batch in batches:
            skipped = [{"name": sample_name(data.dataset, i), "error": e} for i, e in batch.failures]
            count = len(batch.indices) + len(batch.failures)
            if batch.images is None:
                shard.write(np.zeros(0, np.int64), np.zeros((0, shard.features.shape[1])), np.zeros(0), count, skipped)
            else:
                with autocast(bundle.device, bundle.precision):
                    out = encoder.encode(bundle, batch.images)
                out = F.normalize(out.float(), dim=-1).flatten(1).cpu().numpy()  # each token normalised
                shard.write(batch.indices, out, batch.labels, count, skipped)
            bar.update(count)


def image_features(
    bundle: ModelBundle,
    data: LoadedDataset,
    cache: FeatureCache,
    batch_size: int = 256,
    workers: int = 4,
    world: World | None = None,
    view: str = DEFAULT_VIEW,
) -> CachedFeatures:
    """The dataset's `view` features from the cache, extracting them first if needed (on every rank of `world`)."""
    key = feature_key(bundle, data, cache.dtype, view)
    entry = cache.load(key)
    if entry is None or (world is not None and world.distributed):  # every rank joins, even where it is cached
        extract(bundle, data, cache, key, batch_size, workers, world, view)
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

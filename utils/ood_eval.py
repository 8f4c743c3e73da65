"""The OOD evaluation pipeline: resolve datasets, encode each once through the cache, score, measure."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cache import FeatureCache
from utils.data import LoadedDataset, get_spec, load_dataset
from utils.errors import UserError
from utils.features import image_features
from utils.metrics import ood_metrics
from utils.models import ClipBundle
from utils.prompts import Template, text_head
from utils.scores import InDistribution, build_score


@dataclass
class DataOptions:
    root: str | Path = "./data"
    download: bool = True
    limit: int | None = None
    seed: int = 0


def resolve_ood_sets(id_name: str, requested: Sequence[str] | None, options: DataOptions) -> list[LoadedDataset]:
    """OOD test sets: those named (each must be available) or the ID set's defaults (missing ones skipped)."""
    names = list(requested) if requested else [n for n in get_spec(id_name).ood if n != id_name]
    if not names:
        raise UserError(f"'{id_name}' has no default OOD sets; name some with --out")
    for name in names:
        get_spec(name)  # unknown names fail before any download starts
    loaded = []
    for name in names:
        try:
            loaded.append(load_dataset(name, "test", options.root, options.download, options.limit, options.seed))
        except UserError as err:
            if requested:
                raise
            reason = " ".join(line.strip() for line in str(err).splitlines())
            print(f"skipping default OOD set {name}: {reason}", file=sys.stderr)
    if not loaded:
        raise UserError(
            f"none of the default OOD sets of '{id_name}' ({', '.join(names)}) is available under "
            f"{options.root}; get one (see the lines above) or name a folder with --out folder:PATH"
        )
    return loaded


def zero_shot_accuracy(features: np.ndarray, labels: np.ndarray, text: np.ndarray) -> float | None:
    """Top-1 accuracy of nearest-prompt classification; None if the set has no labels."""
    if len(labels) == 0 or labels.min() < 0:
        return None
    predictions = np.concatenate(
        [
            np.argmax(np.asarray(features[i : i + 8192], dtype=np.float32) @ text.T, axis=1)
            for i in range(0, len(features), 8192)
        ]
    )
    return float(np.mean(predictions == labels))


def evaluate(
    bundle: ClipBundle,
    id_data: LoadedDataset,
    ood_sets: Sequence[LoadedDataset],
    score_names: Sequence[str],
    templates: Sequence[Template],
    cache: FeatureCache,
    temperature: float = 1.0,
    batch_size: int = 256,
    workers: int = 4,
) -> dict:
    """Every score against every OOD set; each dataset is encoded at most once (and not at all on a cache hit)."""
    if not id_data.classnames:
        raise UserError(f"ID dataset '{id_data.name}' has no class names; zero-shot scores need them")
    text = text_head(bundle.model, bundle.tokenizer, id_data.classnames, templates, bundle.device).cpu().numpy()
    id_feats = image_features(bundle, id_data, cache, batch_size, workers)
    ood_feats = {d.name: image_features(bundle, d, cache, batch_size, workers) for d in ood_sets}
    ind = InDistribution(text_features=text)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in score_names:
        score = build_score(name, temperature=temperature).fit(ind)
        id_scores = score(id_feats.features)
        results[name] = {}
        for ood_name, feats in ood_feats.items():
            try:
                results[name][ood_name] = ood_metrics(id_scores, score(feats.features))
            except ValueError as err:
                raise UserError(f"score {name}, {id_data.name} vs {ood_name}: {err}") from err
    return {
        "id": id_data.name,
        "id_samples": len(id_feats.index),
        "ood_samples": {k: len(v.index) for k, v in ood_feats.items()},
        "id_accuracy": zero_shot_accuracy(id_feats.features, id_feats.labels, text),
        "results": results,
    }

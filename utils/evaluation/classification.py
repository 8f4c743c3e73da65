"""Classification metrics on features: zero-shot (nearest prompt) and any logits, top-k, per class, confusion."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from utils.arrays import CHUNK, as_array, chunks


def logits_of(features: object, weights: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """features @ weights.T (+ bias), block by block.

    For zero-shot heads (weights = class prompts) these are cosine similarities: a model's logit scale and a
    SigLIP model's bias (utils/models/logits.py) change no argmax or ranking, so top-k accuracy needs neither."""
    blocks = [block @ weights.T.astype(np.float32) for block in chunks(features)]
    out = np.concatenate(blocks) if blocks else np.zeros((0, len(weights)), dtype=np.float32)
    return out + bias if bias is not None else out


def classification_report(logits: np.ndarray, labels: np.ndarray, classnames: Sequence[str], k: int = 5) -> dict:
    """top1, top5 (top-k, k capped at the class count), per-class accuracy and the confusion matrix (rows = truth)."""
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.min() < 0:
        raise ValueError("classification needs labelled samples")
    k = min(k, logits.shape[1])
    ranked = np.argsort(-logits, axis=1, kind="stable")
    predictions = ranked[:, 0]
    confusion = np.zeros((len(classnames), len(classnames)), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {
        name: float(confusion[c, c] / confusion[c].sum()) for c, name in enumerate(classnames) if confusion[c].sum()
    }
    return {
        "top1": float(np.mean(predictions == labels)),
        "top5": float(np.mean((ranked[:, :k] == labels[:, None]).any(axis=1))),
        "per_class": per_class,
        "confusion": confusion,
    }


def top1(logits: Callable[[np.ndarray], np.ndarray], features: object, labels: np.ndarray) -> float | None:
    """Top-1 accuracy of argmax classification, block by block; None if the set has no labels."""
    if len(labels) == 0 or labels.min() < 0:
        return None
    predictions = np.concatenate(
        [logits(as_array(features[i : i + CHUNK])).argmax(1) for i in range(0, len(labels), CHUNK)]
    )
    return float(np.mean(predictions == labels))

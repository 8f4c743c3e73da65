"""NegLabel's negative labels: a word list, encoded once through the cache, mined against the ID class names."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.cache import FeatureCache
from utils.errors import UserError
from utils.features import text_features
from utils.models import ModelBundle
from utils.prompts import Template
from utils.scores import mine_negative_labels

WORDNET_WORDS = Path(__file__).parent / "resources" / "wordnet_nouns_adjectives.txt.gz"


def load_words(path: str | Path | None = None) -> list[str]:
    """Candidate labels, one per line (`#` comments skipped); default: WordNet's 75k single nouns and adjectives."""
    path = Path(path) if path else WORDNET_WORDS
    if not path.is_file():
        raise UserError(f"word list not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        words = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    if not words:
        raise UserError(f"word list {path} holds no words")
    return list(dict.fromkeys(words))


def negative_labels(
    bundle: ModelBundle,
    id_names: Sequence[str],
    id_text: np.ndarray,
    templates: Sequence[Template],
    cache: FeatureCache,
    words_path: str | Path | None = None,
    fraction: float = 0.15,
    percentile: float = 95.0,
) -> tuple[list[str], np.ndarray]:
    """The mined negative words (most distant from the ID labels first) and their text features."""
    taken = {name.lower() for name in id_names}
    words = [w for w in load_words(words_path) if w.lower() not in taken]
    candidates = text_features(bundle, words, templates, cache)
    picked = mine_negative_labels(candidates, id_text, fraction=fraction, percentile=percentile)
    return [words[i] for i in picked], candidates[picked]

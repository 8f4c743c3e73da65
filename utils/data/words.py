"""Word lists (candidate labels, e.g. NegLabel's negatives): the shipped WordNet list or a user's file."""

from __future__ import annotations

import gzip
from pathlib import Path

from utils.errors import UserError

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

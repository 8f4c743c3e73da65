"""Word lists (candidate labels, e.g. NegLabel's negatives): the shipped WordNet pool or a user's file."""

from __future__ import annotations

import gzip
from pathlib import Path

from utils.errors import UserError

WORDNET_POOL = Path(__file__).parent / "resources" / "wordnet_pool.tsv.gz"
PARTS_OF_SPEECH = ("noun", "adj")
RELEASE_POOL_MARK = "# NegLabel release pool (tools/neglabel_words.py):"  # the first line of a converted release list


def is_release_pool(path: str | Path | None) -> bool:
    """Whether `path` is NegLabel's released word lists as converted by tools/neglabel_words.py."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().startswith(RELEASE_POOL_MARK)
    except (OSError, TypeError, UnicodeDecodeError):
        return False


def load_words(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(word, part of speech) pairs, one per line as `word` or `word<TAB>noun|adj` (`#` comments skipped; a word
    without a tag is a noun). Default: NegLabel's pool, WordNet's 71k noun and adjective head lemmas."""
    path = Path(path) if path else WORDNET_POOL
    if not path.is_file():
        raise UserError(f"word list not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith("#"):
                continue
            word, _, pos = line.rstrip("\n").partition("\t")
            pos = pos.strip() or "noun"
            if pos not in PARTS_OF_SPEECH:
                raise UserError(f"{path}:{number}: part of speech '{pos}' is not one of {', '.join(PARTS_OF_SPEECH)}")
            pairs.setdefault(word.strip(), pos)
    if not pairs:
        raise UserError(f"word list {path} holds no words")
    return list(pairs.items())

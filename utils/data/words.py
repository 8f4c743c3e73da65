"""Word lists (candidate labels, e.g. NegLabel's and CSP's negatives): the shipped WordNet pools or a user's file."""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from pathlib import Path

from utils.errors import UserError

WORDNET_POOL = Path(__file__).parent / "resources" / "wordnet_pool.tsv.gz"
CSP_POOL = Path(__file__).parent / "resources" / "csp_pool.tsv.gz"
# CSP (Chen et al., NeurIPS 2024; MengyuanChen21/NeurIPS2024-CSP 3a7bdab): NegLabel's lexicographer files without
# these (custom_config/clip-ViT-B16.py txt_exclude), and each adjective conjugated with one of 14 superclasses
# (mmcls/models/classifiers/class_names.py csp_templates), drawn by Python's random seeded with 0.
CSP_LEFT_OUT = ("noun.person", "noun.quantity", "noun.group", "adj.pert")
CSP_SUPERCLASSES = ("environment", "space", "object", "scene", "place", "item", "area", "view", "thing", "pattern",
                    "structure", "landscape", "vista", "creature")  # fmt: skip
PARTS_OF_SPEECH = ("noun", "adj")
RELEASE_POOL_MARKS = {  # the first line of a release's word lists converted by tools/neglabel_words.py
    "neglabel": "# NegLabel release pool (tools/neglabel_words.py):",
    "csp": "# CSP release pool (tools/neglabel_words.py --csp):",
    "negrefine": "# NegRefine release list (tools/neglabel_words.py --negrefine):",
    "adaneg": "# AdaNeg release pool (tools/neglabel_words.py --adaneg):",
}


def conjugated(adjectives: Sequence[str], seed: int = 0) -> list[str]:
    """CSP's labels: "<adjective> <superclass>", one superclass per adjective drawn in order, as the release does
    (`random.seed(seed)`, then `random.choice(csp_templates)` per adjective, in file and line order)."""
    draw = random.Random(seed)
    return [f"{adjective} {draw.choice(CSP_SUPERCLASSES)}" for adjective in adjectives]


def is_release_pool(path: str | Path | None, method: str = "neglabel") -> bool:
    """Whether `path` is `method`'s (neglabel, csp, negrefine, adaneg) released lists as converted by
    tools/neglabel_words.py."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().startswith(RELEASE_POOL_MARKS[method])
    except (OSError, TypeError, UnicodeDecodeError):
        return False


def load_words(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(word, part of speech) pairs, one per line as `word` or `word<TAB>noun|adj` (`#` comments skipped; a word
    without a tag is a noun; a pair listed twice is kept once, the same word as both parts of speech twice, as CSP's
    release keeps a noun and a conjugated label that read alike). Default: NegLabel's pool, WordNet's 71k noun and
    adjective head lemmas."""
    path = Path(path) if path else WORDNET_POOL
    if not path.is_file():
        raise UserError(f"word list not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: dict[tuple[str, str], None] = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith("#"):
                continue
            word, _, pos = line.rstrip("\n").partition("\t")
            pos = pos.strip() or "noun"
            if pos not in PARTS_OF_SPEECH:
                raise UserError(f"{path}:{number}: part of speech '{pos}' is not one of {', '.join(PARTS_OF_SPEECH)}")
            pairs.setdefault((word.strip(), pos), None)
    if not pairs:
        raise UserError(f"word list {path} holds no words")
    return list(pairs)

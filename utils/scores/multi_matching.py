"""NegRefine (Ansari et al., ICCV 2025): NegLabel's grouped score over a refined negative list, plus multi-matching.

As ah-ansari/NegRefine 72e4b82 src/clip_ood.py: S = S_NegLabel + 2 · S_MM, the first NegLabel's mean ID mass over
100 groups (a probability, not its log-odds: the two terms are added), and

    S_MM(x) = max_{p ∈ top-k ID labels, n ∈ top-k negatives} σ(100 · cos(x, t("p and n")) − 100 · cos(x, n)),

k = 5, t("p and n") the mean of the raw embeddings of the 8 noun prompts of the text "<ID label> and <negative>"
(the release embeds them per image; here every pair some scored image needs is embedded once, by the run). The
refined list is an LLM's filtering of CSP's negatives (proper nouns and subcategories of ID labels removed): we run
no LLM, the list is an input file (--negrefine-words).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from utils.arrays import sigmoid
from utils.models import CLIP_LOGIT_SCALE
from utils.scores.base import as_array, chunks, l2_normalise
from utils.scores.label_mass import NEG_GROUPS, NegativeLabels, NegLabel, id_probability
from utils.settings import Setting, non_negative_float, positive_int

PAIR_ROWS = 1024  # rows scored at once: each gathers k² pair prompts (25 x D floats)
_RELEASE = "NegRefine's release (ah-ansari/NegRefine 72e4b82 src/clip_ood.py"
NEGREFINE_TOP_K = Setting(
    "negrefine_top_k", 5, "multi-matching reads the pairs of the top-k ID labels and the top-k negatives",
    f"{_RELEASE}: k_pos = min(5, classes), k_neg = 5)", type=positive_int, metavar="K",
)  # fmt: skip
NEGREFINE_WEIGHT = Setting(
    "negrefine_weight", 2.0, "weight of the multi-matching score added to the grouped ID mass",
    f"{_RELEASE}: neg_label_score + 2 * multi_matching_score)", type=non_negative_float, metavar="W",
)  # fmt: skip
NEGREFINE_WORDS = Setting(
    "negrefine_words", None, "NegRefine's refined negative labels, one per line as LABEL<TAB>noun|adj, nouns "
    "first (python -m tools.neglabel_words --negrefine converts the release's neg_labels_{noun,adj}.txt); an "
    "LLM's output, not made here",
    "NegRefine's release (ah-ansari/NegRefine 72e4b82 output/imagenet/seed_0/: ImageNet-1k, seed 0)",
    metavar="FILE", default_text="none: negrefine needs one",
)  # fmt: skip


@dataclass
class MultiMatching:
    """What NegRefine scores with: its ID label prompts and negatives, and the prompt of each (ID label, negative)
    pair that an image to be scored has among its top-k of both (`pairs`: pair -> row of `pair_features`)."""

    labels: NegativeLabels
    pairs: dict[tuple[int, int], int]
    pair_features: np.ndarray


def top_matches(features: np.ndarray, id_text: np.ndarray, negatives: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Each row's top-k ID labels and top-k negatives (indices, most similar first), in float32 blocks of the
    shapes a score reads (so that the run's pair table and the score agree to the last bit)."""
    positive, negative = features @ id_text.T, features @ negatives.T
    top_id = np.argsort(-positive, axis=1, kind="stable")[:, : min(k, id_text.shape[0])]
    top_negative = np.argsort(-negative, axis=1, kind="stable")[:, : min(k, negatives.shape[0])]
    return top_id, top_negative


def scored_blocks(features: object) -> Iterator[np.ndarray]:
    """The float32 row blocks in which a score reads `features` (Score.__call__, then PAIR_ROWS)."""
    for block in chunks(features):
        yield from chunks(block, PAIR_ROWS)


def needed_pairs(feature_sets: list[object], labels: NegativeLabels, k: int) -> list[tuple[int, int]]:
    """Every (ID label, negative) pair that multi-matching reads for some row of `feature_sets`, sorted."""
    id_text, negatives = l2_normalise(as_array(labels.id_features)), l2_normalise(as_array(labels.negatives))
    keys = set()
    for features in feature_sets:
        for block in scored_blocks(features):
            top_id, top_negative = top_matches(block, id_text, negatives, k)
            keys.update(zip(np.repeat(top_id, top_negative.shape[1], axis=1).ravel().tolist(),
                            np.tile(top_negative, top_id.shape[1]).ravel().tolist(), strict=True))  # fmt: skip
    return sorted(keys)


class NegRefine(NegLabel):
    """NegRefine (Ansari et al., ICCV 2025): NegLabel's mean ID mass over 100 groups of a refined negative list
    (--negrefine-words) + 2 · max over the top-5 ID labels p and top-5 negatives n of σ(100 · [s("p and n") − s_n])."""

    inputs = ("negrefine_labels", "seed", "logit_scale")
    settings = (NEG_GROUPS, NEGREFINE_TOP_K, NEGREFINE_WEIGHT)
    not_in_all = "it needs --negrefine-words FILE, a refined negative list (an LLM's output)"

    def __init__(self, negrefine_labels: MultiMatching | None = None, neg_groups: int = NEG_GROUPS.default,
                 negrefine_top_k: int = NEGREFINE_TOP_K.default, negrefine_weight: float = NEGREFINE_WEIGHT.default,
                 seed: int = 0, logit_scale: float = CLIP_LOGIT_SCALE):  # fmt: skip
        if negrefine_labels is None:
            raise ValueError("NegRefine needs negrefine_labels (its labels and the pairs' prompts)")
        super().__init__(negrefine_labels.labels, neg_groups, seed, logit_scale)
        self.every_negative = l2_normalise(as_array(negrefine_labels.labels.negatives))  # top-k reads all of them
        self.pairs, self.pair_features = negrefine_labels.pairs, l2_normalise(as_array(negrefine_labels.pair_features))
        self.top_k, self.weight = int(negrefine_top_k), float(negrefine_weight)

    def _score(self, features: np.ndarray) -> np.ndarray:
        return id_probability(super()._score(features)) + self.weight * self.multi_matching(features)

    def multi_matching(self, features: np.ndarray) -> np.ndarray:
        """S_MM per row, in float64 (in blocks of PAIR_ROWS rows: each row gathers k² pair prompts)."""
        return np.concatenate([self._multi_matching(block) for block in chunks(features, PAIR_ROWS)])

    def _multi_matching(self, features: np.ndarray) -> np.ndarray:
        top_id, top_negative = top_matches(features, self.id_text, self.every_negative, self.top_k)
        features = features.astype(np.float64)
        try:  # pair a·k + b is (top_id[a], top_negative[b]), as needed_pairs lists them
            rows = np.array([[self.pairs[(i, j)] for i in ids for j in negs] for ids, negs in
                             zip(top_id.tolist(), top_negative.tolist(), strict=True)])  # fmt: skip
        except KeyError as err:
            raise ValueError(f"NegRefine has no prompt for the pair {err}: its pairs were built for other images") \
                from None  # fmt: skip
        pair_similarity = np.einsum("nd,npd->np", features, self.pair_features[rows].astype(np.float64))
        chosen = self.every_negative[top_negative].astype(np.float64)  # [rows, k, D]
        negative_similarity = np.tile(np.einsum("nd,nkd->nk", features, chosen), (1, top_id.shape[1]))
        return sigmoid(self.logit_scale * (pair_similarity - negative_similarity)).max(axis=1)

    def details(self) -> dict[str, float]:
        return {**super().details(), "pairs": len(self.pairs)}

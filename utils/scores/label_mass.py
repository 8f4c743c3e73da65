"""Scores from the probability mass on the ID classes when extra (OOD or negative) labels compete with them.

Each ranks by the log-odds of that mass, lse(ID logits) − lse(extra logits) = logit(p_ID), not by p_ID itself:
with 100× logits p_ID rounds to exactly 1.0 in float64 once the extra labels are ~0.37 cosine below the ID ones,
and the ties then decide the metrics. The ranking is p_ID's; `id_probability` gives p_ID back where wanted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.arrays import logsumexp, sigmoid
from utils.models import CLIP_LOGIT_SCALE  # the papers below use logits 100 · s
from utils.scores.base import InDistribution, Score, as_array, chunks, l2_normalise
from utils.settings import Setting, fraction, percentile, positive_int

_RELEASE = "NegLabel's release (XueJiang16/NegLabel custom_config/clip.py"
NEG_GROUPS = Setting(
    "neg_groups",
    100,
    "average the ID mass over G random groups of the negatives; 1 = the paper's one softmax over the ID labels and "
    "all negatives (the release's ngroup = 1 branch scores the sum of the ID logits instead, with no softmax and no "
    "negatives: that is not offered)",
    f"{_RELEASE}: ngroup=100)",
    type=positive_int,
    select=("groups",),
    metavar="G",
)
NEG_WORDS = Setting(
    "neg_words",
    None,
    "candidate words, one per line as WORD or WORD<TAB>noun|adj",
    f"{_RELEASE}: wordnet_database)",
    metavar="FILE",
    default_text="the released pool's WordNet noun and adjective head lemmas",
)
CSP_WORDS = Setting(
    "csp_words",
    None,
    "CSP's candidates, one per line as LABEL or LABEL<TAB>noun|adj, adjectives already conjugated ('lively area'; "
    "python -m tools.neglabel_words --csp converts the release's txtfiles/)",
    "CSP's release (MengyuanChen21/NeurIPS2024-CSP 3a7bdab custom_config/clip-ViT-B16.py: NegLabel's txtfiles "
    "without txt_exclude)",
    metavar="FILE",
    default_text="the shipped CSP pool, rebuilt from WordNet 3.1 (tools/wordnet_pool.py --csp)",
)
NEG_FRACTION = Setting(
    "neg_fraction",
    0.15,
    "the share of each part of speech's candidates kept as negatives, least ID-like first",
    f"{_RELEASE}: neg_topk=0.15)",
    type=fraction,
    metavar="SHARE",
)
NEG_PERCENTILE = Setting(
    "neg_percentile",
    95.0,
    "a candidate's closeness to the ID labels: this percentile of its similarities to them",
    f"{_RELEASE}: pencentile=0.95)",
    type=percentile,
    metavar="P",
)


def id_probability(log_odds: np.ndarray) -> np.ndarray:
    """p_ID = σ(log-odds): the ID mass Σ_{k ∈ ID} softmax(·)_k that a label-mass score's value stands for."""
    return sigmoid(log_odds)


class LabelMass(Score):
    """logit(p_ID), p_ID = Σ_{k ∈ ID} softmax(scale · [s_ID, s_extra])_k: how much of the prediction stays on ID."""

    needs = ("text_features",)
    extra_name = "extra_text_features"

    def __init__(self, extra_text_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        super().__init__()
        if extra_text_features is None:
            raise ValueError(f"{type(self).__name__} needs {self.extra_name} (the competing labels' text features)")
        self.extra = as_array(extra_text_features)
        if self.extra.ndim != 2 or len(self.extra) == 0:
            raise ValueError(f"{self.extra_name} must be a non-empty [M, D] array, got shape {self.extra.shape}")
        self.extra = l2_normalise(self.extra)
        self.logit_scale = float(logit_scale)

    def _fit(self, ind: InDistribution) -> None:
        self.id_text = l2_normalise(as_array(ind.text_features))
        if self.id_text.shape[1] != self.extra.shape[1]:
            raise ValueError(
                f"{self.extra_name} have dimension {self.extra.shape[1]}, ID prompts {self.id_text.shape[1]}"
            )

    def _score(self, features: np.ndarray) -> np.ndarray:
        id_logits = self.logit_scale * (features @ self.id_text.T).astype(np.float64)
        extra_logits = self.logit_scale * (features @ self.extra.T).astype(np.float64)
        return logsumexp(id_logits) - logsumexp(extra_logits)


class Oracle(LabelMass):
    """Fort et al. (NeurIPS 2021), OOD class names known ("cheating"): ID mass in a softmax over ID ∪ OOD names."""

    extra_name = "ood_text_features"
    inputs = ("ood_text_features", "logit_scale")

    def __init__(self, ood_text_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        super().__init__(ood_text_features, logit_scale)


@dataclass(frozen=True)
class NegativeLabels:
    """What NegLabel scores against: its own ID label prompts [C, D] and the mined negatives [M, D], in the
    released order (nouns, then adjectives, each least ID-like first)."""

    id_features: np.ndarray
    negatives: np.ndarray


class NegLabel(Score):
    """NegLabel (Jiang et al., ICLR 2024) as released: the ID mass of softmax(100 · [s_ID, s_group]) averaged over
    `neg_groups` random groups of the negatives; ranked by the log-odds of that mean (see the module docstring).

    As XueJiang16/NegLabel (clip_ood.py): the last M mod G negatives are dropped, the rest permuted (seeded) and cut
    into G equal groups. neg_groups = 1 is the paper's ungrouped score, lse(ID) − lse(all negatives); the release's
    ngroup = 1 branch (clip_ood.py) returns Σ_c 100 · s_c over the ID labels instead (no softmax, no negatives),
    which is a different score and is not offered here.
    """

    needs = ()
    reads_text = True
    inputs = ("negative_labels", "seed", "logit_scale")
    settings = (NEG_GROUPS,)

    def __init__(self, negative_labels: NegativeLabels | None = None, neg_groups: int = NEG_GROUPS.default,
                 seed: int = 0, logit_scale: float = CLIP_LOGIT_SCALE):  # fmt: skip
        super().__init__()
        if negative_labels is None:
            raise ValueError("NegLabel needs negative_labels (ID label prompts and mined negative labels)")
        if neg_groups < 1:
            raise ValueError(f"neg_groups must be at least 1, got {neg_groups}")
        self.id_text = l2_normalise(as_array(negative_labels.id_features))
        negatives = l2_normalise(as_array(negative_labels.negatives))
        if negatives.ndim != 2 or len(negatives) == 0 or negatives.shape[1] != self.id_text.shape[1]:
            raise ValueError(f"negative labels must be a non-empty [M, {self.id_text.shape[1]}] array, "
                             f"got shape {negatives.shape}")  # fmt: skip
        self.mined, self.groups = len(negatives), min(neg_groups, len(negatives))  # G groups need G negatives
        kept = len(negatives) - len(negatives) % self.groups
        order = np.random.default_rng(seed).permutation(kept)
        self.negatives = negatives[order]  # group g = rows g·size ... (g+1)·size − 1
        self.logit_scale = float(logit_scale)

    def _score(self, features: np.ndarray) -> np.ndarray:
        id_logits = self.logit_scale * (features @ self.id_text.T).astype(np.float64)
        return grouped_log_odds(id_logits, self.logit_scale * (features @ self.negatives.T).astype(np.float64),
                                self.groups)  # fmt: skip

    def details(self) -> dict[str, float]:
        return {"neg_groups": self.groups, "negatives": len(self.negatives), "mined": self.mined}


class CSP(NegLabel):
    """CSP (Chen et al., NeurIPS 2024) as released: NegLabel's grouped ID mass over negatives mined from the
    conjugated semantic pool: WordNet nouns and "<adjective> <superclass>" labels, prompt-ensembled.

    As MengyuanChen21/NeurIPS2024-CSP 3a7bdab: ID labels and nouns are the mean of 8 raw prompt embeddings, the
    conjugated labels of 4; each part of speech keeps its lowest 15% by the 95th-percentile similarity to the ID
    labels, a candidate above 0.95 cosine to any ID label never; then NegLabel's 100 groups at scale 100.
    """

    inputs = ("csp_labels", "seed", "logit_scale")
    not_in_all = "its pool's 416k prompts take minutes to encode on a CPU (once; then cached)"

    def __init__(self, csp_labels: NegativeLabels | None = None, neg_groups: int = NEG_GROUPS.default,
                 seed: int = 0, logit_scale: float = CLIP_LOGIT_SCALE):  # fmt: skip
        if csp_labels is None:
            raise ValueError("CSP needs csp_labels (ID label prompts and the negatives mined from its pool)")
        super().__init__(csp_labels, neg_groups, seed, logit_scale)


def grouped_log_odds(id_logits: np.ndarray, negative_logits: np.ndarray, groups: int) -> np.ndarray:
    """NegLabel's grouping, ranked: logit of the mean over G consecutive groups of the negative columns of the ID
    mass of softmax([ID logits, the group's logits])."""
    negative = negative_logits.reshape(len(id_logits), groups, -1)
    return mean_probability_log_odds(logsumexp(id_logits)[:, None] - logsumexp(negative, axis=2))


def mean_probability_log_odds(log_odds: np.ndarray) -> np.ndarray:
    """logit(mean_g σ(z_g)) per row, in log space: = z when there is one column; never rounds to ±inf or ties."""
    log_p = logsumexp(-np.logaddexp(0.0, -log_odds))  # log Σ_g σ(z_g)
    log_not_p = logsumexp(-np.logaddexp(0.0, log_odds))  # log Σ_g (1 − σ(z_g))
    return log_p - log_not_p


def mine_negative_labels(
    candidate_text_features: object,
    id_text_features: object,
    fraction: float = NEG_FRACTION.default,
    percentile: float = NEG_PERCENTILE.default,
    exclude_above: float | None = None,
    keep: int | None = None,
    order_statistic: bool = False,
) -> np.ndarray:
    """NegLabel's selection: the `fraction` of candidates (or `keep` of them) whose `percentile`-th similarity to the
    ID labels is lowest.

    With `exclude_above` (CSP: 0.95), a candidate whose largest similarity to an ID label exceeds it ranks as 1.0,
    last (the release's `sim[maximum > 0.95] = 1.0`). `order_statistic` (AdaNeg's release): the percentile is the
    int(C · percentile / 100)-th smallest of the C similarities, not numpy's interpolated one. Returns candidate
    indices, most distant first.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    id_text = l2_normalise(as_array(id_text_features))
    eta = []
    for block in chunks(candidate_text_features):
        similarity = l2_normalise(block) @ id_text.T
        if order_statistic:
            stat = np.sort(similarity, axis=1)[:, min(int(similarity.shape[1] * percentile / 100), len(id_text) - 1)]
        else:
            stat = np.percentile(similarity, percentile, axis=1)
        if exclude_above is not None:
            stat[similarity.max(axis=1) > exclude_above] = 1.0
        eta.append(stat)
    eta = np.concatenate(eta)
    keep = max(1, int(fraction * len(eta))) if keep is None else keep  # floor, as the release
    return np.argsort(eta, kind="stable")[:keep]


class KPlusOne(LabelMass):
    """Fine-tuning baseline #2 (a K+1-th "OOD" class): 1 − p(OOD) = ID mass of softmax(scale · [s_ID, s_OOD])."""

    extra_name = "ood_prompt_features"
    inputs = ("ood_prompt_features", "logit_scale")
    supplied_by = "kplus1"

    def __init__(self, ood_prompt_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        super().__init__(ood_prompt_features, logit_scale)


class GroupOthers(Score):
    """MOS (Huang & Li, CVPR 2021): −min_g p_others(g), p from each group's softmax over its classes + "others".

    Ranked, without saturation, by max_g [lse(group g's class logits) − others_g logit] = max_g logit(1 − p_others(g)),
    which orders images exactly as −min_g p_others(g). `groups` lists each group's class names, `classnames` the ID
    classes in prompt order.
    """

    needs = ("text_features",)
    inputs = ("groups", "classnames", "others_features", "logit_scale")
    supplied_by = "group"

    def __init__(self, groups: list[list[str]] | None = None, classnames: list[str] | None = None,
                 others_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):  # fmt: skip
        super().__init__()
        if not groups or not classnames or others_features is None:
            raise ValueError("GroupOthers needs groups (class names per group), classnames and others_features [G, D]")
        index = {name: k for k, name in enumerate(classnames)}
        unknown = [c for group in groups for c in group if c not in index]
        if unknown:
            raise ValueError(f"the groups name classes {unknown[:5]} that the ID set does not have")
        self.groups = [[index[c] for c in group] for group in groups]
        self.others = l2_normalise(as_array(others_features))
        if len(self.others) != len(groups):
            raise ValueError(f"{len(groups)} groups but {len(self.others)} others_features")
        self.logit_scale = float(logit_scale)

    def _fit(self, ind: InDistribution) -> None:
        self.id_text = l2_normalise(as_array(ind.text_features))

    def _score(self, features: np.ndarray) -> np.ndarray:
        class_logits = self.logit_scale * (features @ self.id_text.T).astype(np.float64)
        others_logits = self.logit_scale * (features @ self.others.T).astype(np.float64)
        log_odds = [logsumexp(class_logits[:, members]) - others_logits[:, g] for g, members in enumerate(self.groups)]
        return np.max(np.stack(log_odds, axis=1), axis=1)

"""Scores from the probability mass on the ID classes when extra (OOD or negative) labels compete with them."""

from __future__ import annotations

import numpy as np

from utils.arrays import logsumexp
from utils.models import CLIP_LOGIT_SCALE  # the papers below use logits 100 · s
from utils.scores.base import InDistribution, Score, as_array, chunks, l2_normalise


class LabelMass(Score):
    """Σ_{k ∈ ID} softmax(scale · [s_ID, s_extra])_k: how much of the prediction stays on ID labels."""

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
        everything = np.concatenate([id_logits, extra_logits], axis=1)
        return np.exp(logsumexp(id_logits) - logsumexp(everything))


class Oracle(LabelMass):
    """Fort et al. (NeurIPS 2021), OOD class names known ("cheating"): ID mass in a softmax over ID ∪ OOD names."""

    extra_name = "ood_text_features"
    inputs = ("ood_text_features",)

    def __init__(self, ood_text_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        super().__init__(ood_text_features, logit_scale)


class NegLabel(LabelMass):
    """NegLabel (Jiang et al., ICLR 2024): ID mass in a softmax over ID labels ∪ mined negative labels."""

    extra_name = "negative_text_features"
    inputs = ("negative_text_features",)

    def __init__(self, negative_text_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        super().__init__(negative_text_features, logit_scale)


def mine_negative_labels(
    candidate_text_features: object, id_text_features: object, fraction: float = 0.15, percentile: float = 95.0
) -> np.ndarray:
    """NegLabel's selection: the `fraction` of candidates whose `percentile`-th similarity to the ID labels is lowest.

    Returns candidate indices, most distant first.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    id_text = l2_normalise(as_array(id_text_features))
    eta = np.concatenate(
        [
            np.percentile(l2_normalise(block) @ id_text.T, percentile, axis=1)
            for block in chunks(candidate_text_features)
        ]
    )
    keep = max(1, round(fraction * len(eta)))
    return np.argsort(eta, kind="stable")[:keep]


class KPlusOne(LabelMass):
    """Fine-tuning baseline #2 (a K+1-th "OOD" class): 1 − p(OOD) = ID mass of softmax(scale · [s_ID, s_OOD])."""

    extra_name = "ood_prompt_features"
    inputs = ("ood_prompt_features", "logit_scale")

    def __init__(self, ood_prompt_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        super().__init__(ood_prompt_features, logit_scale)


class GroupOthers(Score):
    """MOS (Huang & Li, CVPR 2021): −min_g p_others(g), p from each group's softmax over its classes + "others".

    `groups` lists each group's class names, `classnames` the ID classes in prompt order.
    """

    needs = ("text_features",)
    inputs = ("groups", "classnames", "others_features", "logit_scale")

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
        p_others = [
            np.exp(others_logits[:, g] - logsumexp(np.c_[class_logits[:, members], others_logits[:, g]]))
            for g, members in enumerate(self.groups)
        ]
        return -np.min(np.stack(p_others, axis=1), axis=1)

"""Scores of fine-tuned learned prompts: NegPrompt's negative prompts and ID-Like's OOD prompts (from --ckpt)."""

from __future__ import annotations

import numpy as np

from utils.arrays import logsumexp
from utils.models import CLIP_LOGIT_SCALE
from utils.scores.base import InDistribution, Score, as_array, l2_normalise
from utils.scores.label_mass import LabelMass


def _rows(features: object, name: str) -> np.ndarray:
    """[..., D] learned prompt features as unit rows [M, D]."""
    array = as_array(features)
    if array.ndim < 2 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty [..., D] array, got shape {array.shape}")
    return l2_normalise(array.reshape(-1, array.shape[-1]))


class NegPrompt(Score):
    """NegPrompt (Li et al., CVPR 2024): log max_c exp(s_c) / (Σ_c exp(s_c) + Σ_{c,j} exp(s_cj)), s the cosines (T =
    1) to the positive class prompts and to the learned negative prompts (each negative context before each class)."""

    needs = ("text_features",)
    inputs = ("negative_prompt_features",)
    supplied_by = "negprompt"

    def __init__(self, negative_prompt_features: object = None):
        super().__init__()
        if negative_prompt_features is None:
            raise ValueError("NegPrompt needs negative_prompt_features (a negprompt checkpoint's negative prompts)")
        self.negative = _rows(negative_prompt_features, "negative_prompt_features")

    def _fit(self, ind: InDistribution) -> None:
        self.positive = l2_normalise(as_array(ind.text_features))

    def _score(self, features: np.ndarray) -> np.ndarray:
        positive = (features @ self.positive.T).astype(np.float64)
        negative = (features @ self.negative.T).astype(np.float64)
        return positive.max(axis=1) - logsumexp(np.concatenate([positive, negative], axis=1))


class IDLike(LabelMass):
    """ID-Like (Bai et al., CVPR 2024): logit of the ID mass Σ_c softmax(scale · [s_ID, s_OOD])_c over the class
    prompts and the learned OOD prompts (the release's 1 − Σ p_OOD, as log-odds: no float saturation)."""

    extra_name = "idlike_ood_features"
    inputs = ("idlike_ood_features", "logit_scale")
    supplied_by = "idlike"

    def __init__(self, idlike_ood_features: object = None, logit_scale: float = CLIP_LOGIT_SCALE):
        rows = None if idlike_ood_features is None else _rows(idlike_ood_features, "idlike_ood_features")
        super().__init__(rows, logit_scale)

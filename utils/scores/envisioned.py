"""EOE (Cao et al., ICML 2024): outlier class names envisioned by an LLM compete with the ID ones, and penalise.

As tmlr-group/EOE 20fa95e utils/detection_util.py: p = softmax(cos(x, [ID prompts; envisioned prompts]) / T), one
joint softmax on cosines (T = 1, no 100x scale, as MCM), and S = max_{i ≤ K} p_i − β · max_{j > K} p_j with β = 0.25
(eval.sh, every task). The names come from a file (utils/generate_llm_class.py load_llm_classes: lowercased, each
once, ID names removed); the paper's LLM prompts are in README. The near task's extra filter (an envisioned name
sharing a word with an ID name is dropped, remove_overlap_class) is not applied here.
"""

from __future__ import annotations

import numpy as np

from utils.arrays import log_softmax
from utils.scores.base import InDistribution, Score, as_array, l2_normalise
from utils.scores.zero_shot import TEMPERATURE
from utils.settings import Setting, non_negative_float

EOE_BETA = Setting("eoe_beta", 0.25, "weight β of the envisioned outliers' largest probability",
                   "EOE's eval.sh (tmlr-group/EOE 20fa95e: --beta 0.25 for every task)", type=non_negative_float,
                   select=("beta",), metavar="BETA")  # fmt: skip
EOE_NAMES = Setting(
    "eoe_names", None, "the outlier class names an LLM envisioned for this ID set: one per line, or one of the "
    "release's envisioned_classes/*.json (README: the paper's prompts)",
    "EOE: envisioned_classes/ (an LLM's answers; none shipped here)", metavar="FILE",
    default_text="none: eoe needs one",
)  # fmt: skip


def envisioned_names(lines: list[str], id_names: list[str]) -> list[str]:
    """The release's cleaning: lowercased, each name once (first occurrence kept), the ID class names removed; blank
    lines and `#` comments skipped."""
    id_lower = {name.lower() for name in id_names}
    names = dict.fromkeys(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))
    return [name for name in names if name not in id_lower]


class EOE(Score):
    """EOE (Cao et al., ICML 2024): max_{ID} p − β · max_{envisioned} p, p = softmax(s / T) over the ID prompts and
    the prompts of LLM-envisioned outlier names (--eoe-names), T = 1, β = 0.25."""

    needs = ("text_features",)
    inputs = ("envisioned_features",)
    settings = (TEMPERATURE, EOE_BETA)
    reads_text = True
    not_in_all = "it needs --eoe-names FILE, names only the user can supply"

    def __init__(self, envisioned_features: object = None, temperature: float = TEMPERATURE.default,
                 eoe_beta: float = EOE_BETA.default):  # fmt: skip
        super().__init__()
        if envisioned_features is None or len(as_array(envisioned_features)) == 0:
            raise ValueError("EOE needs envisioned_features (the prompts of the envisioned outlier names)")
        if not temperature > 0 or eoe_beta < 0:
            raise ValueError(f"EOE needs T > 0 and β >= 0, got T = {temperature}, β = {eoe_beta}")
        self.envisioned = l2_normalise(as_array(envisioned_features))
        self.temperature, self.beta = float(temperature), float(eoe_beta)

    def _fit(self, ind: InDistribution) -> None:
        self.text_features = as_array(ind.text_features)
        self.labels = np.r_[self.text_features, self.envisioned].astype(np.float64)

    def _score(self, features: np.ndarray) -> np.ndarray:
        p = np.exp(log_softmax(features.astype(np.float64) @ self.labels.T / self.temperature))
        classes = len(self.text_features)
        return p[:, :classes].max(axis=1) - self.beta * p[:, classes:].max(axis=1)

    def details(self) -> dict[str, float]:
        return {"envisioned": len(self.envisioned)}

"""Zero-shot scores on patch-level features (the `local` view: the global embedding, then P patch tokens)."""

from __future__ import annotations

import numpy as np

from utils.scores.zero_shot import TEMPERATURE, TemperedScore, mcm_log_odds
from utils.settings import Setting, non_negative_float

GL_LAMBDA = Setting(
    "gl_lambda", 1.0, "gl_mcm = mcm + LAMBDA · l_mcm", "GL-MCM's code default (AtsuMiyai/GL-MCM; its ImageNet script "
    "uses 0.5)", type=non_negative_float, select=("lambda",), metavar="LAMBDA",
)  # fmt: skip


class _LocalScore(TemperedScore):
    """Base: the ID prompts and temperature of the zero-shot scores, on rows of the `local` view."""

    view = "local"

    def _logits(self, tokens: np.ndarray) -> np.ndarray:
        """s / T of every token: [rows, tokens, classes]."""
        return np.einsum("btd,kd->btk", tokens, self.text_features).astype(np.float64) / self.temperature

    def _tokens(self, rows: np.ndarray) -> np.ndarray:
        dim = self.text_features.shape[1]
        if rows.shape[1] % dim:
            raise ValueError(f"local rows of width {rows.shape[1]} are not tokens of dimension {dim}")
        return rows.reshape(len(rows), -1, dim)


class LocalMCM(_LocalScore):
    """L-MCM (Miyai et al., 2023): max over patches p of max_k softmax(s_p / T)_k, s_p the patch's cosines, T = 1;
    ranked by the largest patch log-odds (as MCM)."""

    def _score(self, features: np.ndarray) -> np.ndarray:
        return mcm_log_odds(self._logits(self._tokens(features)[:, 1:])).max(axis=1)


class GLMCM(_LocalScore):
    """GL-MCM (Miyai et al., 2023): MCM + λ · L-MCM, on the global embedding and the patches; λ = 1 in the code's
    default (AtsuMiyai/GL-MCM; its ImageNet script uses 0.5). A sum of two probabilities: at small T both saturate
    at 1, as in the paper's formula."""

    settings = (TEMPERATURE, GL_LAMBDA)

    def __init__(self, temperature: float = TEMPERATURE.default, gl_lambda: float = GL_LAMBDA.default):
        super().__init__(temperature)
        self.gl_lambda = float(gl_lambda)

    def _score(self, features: np.ndarray) -> np.ndarray:
        s = self._logits(self._tokens(features))
        best = 1.0 / np.exp(s - s.max(axis=2, keepdims=True)).sum(axis=2)  # max_k softmax of every token
        return best[:, 0] + self.gl_lambda * best[:, 1:].max(axis=1)

"""Zero-shot scores on patch-level features (the `local` view: the global embedding, then P patch tokens)."""

from __future__ import annotations

import numpy as np

from utils.scores.zero_shot import ZeroShotScore


class _LocalScore(ZeroShotScore):
    """Base: the ID prompts and temperature of the zero-shot scores, on rows of the `local` view."""

    view = "local"

    def _max_softmax(self, tokens: np.ndarray) -> np.ndarray:
        """max_k softmax(s / T)_k of every token: [rows, tokens]."""
        s = np.einsum("btd,kd->btk", tokens, self.text_features).astype(np.float64) / self.temperature
        return 1.0 / np.exp(s - s.max(axis=2, keepdims=True)).sum(axis=2)  # the top class's share

    def _tokens(self, rows: np.ndarray) -> np.ndarray:
        dim = self.text_features.shape[1]
        if rows.shape[1] % dim:
            raise ValueError(f"local rows of width {rows.shape[1]} are not tokens of dimension {dim}")
        return rows.reshape(len(rows), -1, dim)


class LocalMCM(_LocalScore):
    """L-MCM (Miyai et al., 2023): max over patches p of max_k softmax(s_p / T)_k, s_p the patch's cosines, T = 1."""

    def _score(self, features: np.ndarray) -> np.ndarray:
        return self._max_softmax(self._tokens(features)[:, 1:]).max(axis=1)


class GLMCM(_LocalScore):
    """GL-MCM (Miyai et al., 2023): MCM + λ · L-MCM, on the global embedding and the patches; λ = 1 in the code's
    default (AtsuMiyai/GL-MCM; its ImageNet script uses 0.5)."""

    inputs = ("temperature", "gl_lambda")

    def __init__(self, temperature: float = 1.0, gl_lambda: float = 1.0):
        super().__init__(temperature)
        self.gl_lambda = float(gl_lambda)

    def _score(self, features: np.ndarray) -> np.ndarray:
        best = self._max_softmax(self._tokens(features))
        return best[:, 0] + self.gl_lambda * best[:, 1:].max(axis=1)

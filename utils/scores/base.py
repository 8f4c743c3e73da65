"""What every score is: `fit(InDistribution)` then `__call__(features) -> [N]`, higher = more in-distribution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InDistribution:
    """What a score may learn from: ID class prompts [C, D] and ID training features [N, D] with labels [N]."""

    text_features: np.ndarray | None = None
    train_features: np.ndarray | None = None
    train_labels: np.ndarray | None = None


def as_array(x: object) -> np.ndarray:
    """numpy or torch input as a float32 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


class Score:
    """Base class. Subclasses list the InDistribution fields they need in `needs`."""

    needs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._fitted = False

    def fit(self, ind: InDistribution) -> Score:
        missing = [field for field in self.needs if getattr(ind, field) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs {', '.join(missing)} to fit")
        self._fit(ind)
        self._fitted = True
        return self

    def _fit(self, ind: InDistribution) -> None:
        pass

    def __call__(self, features: object) -> np.ndarray:
        if not self._fitted:
            needs = ", ".join(self.needs) or "nothing"
            raise RuntimeError(f"{type(self).__name__} must be fit(...) before scoring (it needs {needs})")
        return self._score(features)

    def _score(self, features: object) -> np.ndarray:
        raise NotImplementedError

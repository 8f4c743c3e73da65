"""What every score is: `fit(InDistribution)` then `__call__(features) -> [N]`, higher = more in-distribution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.arrays import CHUNK, as_array, chunks, l2_normalise


@dataclass
class InDistribution:
    """What a score may learn from: ID class prompts [C, D] and ID training features [N, D] with labels [N].

    `shared` holds fits that several scores reuse (class statistics, the linear probe), so each is made once.
    """

    text_features: np.ndarray | None = None
    train_features: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    shared: dict[str, Any] = field(default_factory=dict, repr=False)


__all__ = ["CHUNK", "InDistribution", "Score", "as_array", "chunks", "l2_normalise"]


class Score:
    """Base class. Subclasses list the InDistribution fields they need in `needs`."""

    needs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._fitted = False

    def fit(self, ind: InDistribution) -> Score:
        missing = [name for name in self.needs if getattr(ind, name) is None]
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
        blocks = [self._score(block) for block in chunks(features)]
        return np.concatenate(blocks).astype(np.float64) if blocks else np.zeros(0)

    def _score(self, features: np.ndarray) -> np.ndarray:
        """Scores of one float32 block of rows."""
        raise NotImplementedError

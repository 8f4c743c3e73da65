"""What every score is: `fit(InDistribution)` then `__call__(features) -> [N]`, higher = more in-distribution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.arrays import CHUNK, as_array, chunks, l2_normalise
from utils.settings import Setting


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
    """Base class. What a score needs is declared, so that a run can supply it without knowing the score:

    - `needs`: the InDistribution fields `fit` reads (ID prompts, ID training features and labels);
    - `inputs`: the constructor arguments a run supplies by name (utils/evaluation/inputs.py resolves each name);
    - `settings`: its hyper-parameters, declared once (utils/settings.py): keyword arguments too, from which the
      flags, `--select` names and help are derived; a score that reads none declares none;
    - `sweep_over`: a setting of which several values are served by one `sweep` call (KNN's k);
    - `supplied_by`: the fine-tuning method (finetune_clip.py --method) whose checkpoint supplies its own inputs;
    - `view`: which image features it scores (utils/features/images.py VIEWS);
    - `classifier`: scores that also classify name their classifier and give its `logits`;
    - `reads_text`: compares images with text through its inputs rather than `needs` (so needs a text encoder);
    - `not_in_all`: why `--score all` leaves it out ("": it is in), e.g. inputs that take minutes to build;
    - `streams`: an image's score depends on the images scored before it (AdaNeg's test-time memory): it gives
      `stream(parts)`, and a run streams the ID set with each OOD set, in a seeded order the score records.
    """

    needs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    settings: tuple[Setting, ...] = ()
    sweep_over: str | None = None
    supplied_by: str | None = None
    view: str = "global"
    classifier: str | None = None
    reads_text: bool = False
    not_in_all: str = ""
    streams: bool = False

    def __init__(self) -> None:
        self._fitted = False

    @classmethod
    def arguments(cls) -> tuple[str, ...]:
        """Every constructor argument a run supplies by name: the inputs, then the settings."""
        return (*cls.inputs, *(s.name for s in cls.settings))

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

    def sweep(self, features: object, values: Sequence[Any]) -> dict[Any, np.ndarray]:
        """Scores for several values of `sweep_over` from one pass (only scores that declare `sweep_over`)."""
        raise NotImplementedError(f"{type(self).__name__} has no sweep")

    def logits(self, features: object) -> np.ndarray:
        """The logits of this score's classifier (only scores that declare `classifier`)."""
        raise NotImplementedError(f"{type(self).__name__} is not a classifier")

    def details(self) -> dict[str, float]:
        """What it ran with, worth reporting beside the results (results.json `ran`): fitted values (the linear
        probe's chosen C) and, under the setting's own name, a setting it had to adjust (NegLabel's neg_groups,
        capped at the negatives' count), which the run then notes."""
        return {}

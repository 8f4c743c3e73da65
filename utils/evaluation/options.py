"""The settings of an evaluation run, built by keyword from the parsed arguments (or by hand in a notebook)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from utils.prompts import TEMPLATE_SETS, Template


@dataclass
class EvalOptions:
    templates: Sequence[Template] = TEMPLATE_SETS["single"]
    temperature: float = 1.0
    gl_lambda: float = 1.0  # GL-MCM's weight of the local term (its code's default; its ImageNet script: 0.5)
    k: Sequence[int] | None = None  # KNN's k values; None: the ID dataset's default
    batch_size: int = 256
    workers: int = 4
    bootstrap: int = 0
    seed: int = 0
    neg_words: str | None = None  # candidate labels of negative-label scores; None: the shipped WordNet pool
    extra_metrics: Sequence[str] = ()  # EXTRA_METRICS names (one codebase's definitions)
    neg_groups: int = 100  # NegLabel's random groups of negatives (the release: 100; 1 = ungrouped)
    pood_head: str = "zero_shot"  # the head pytorch-ood's detectors read: zero_shot (CLIP's) or probe (lp_*'s)

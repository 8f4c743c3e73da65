"""The fine-tuning methods `finetune_clip.py --method` accepts, by name."""

from __future__ import annotations

from utils.training.idlike import IDLikeObjective
from utils.training.negprompt import NegPromptObjective
from utils.training.objectives import (
    ContrastiveObjective,
    GroupObjective,
    KPlusOneObjective,
    Objective,
    OutlierExposureObjective,
)
from utils.training.prompt_learning import CoOpObjective, LoCoOpObjective

METHODS: dict[str, type[Objective]] = {
    "contrastive": ContrastiveObjective,
    "kplus1": KPlusOneObjective,
    "oe": OutlierExposureObjective,
    "group": GroupObjective,
    "coop": CoOpObjective,
    "locoop": LoCoOpObjective,
    "negprompt": NegPromptObjective,
    "idlike": IDLikeObjective,
}

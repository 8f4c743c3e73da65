"""The score registry: every name `--score` accepts. Higher = more in-distribution, always.

from utils.scores import SCORES, InDistribution, build_score
knn = build_score("knn", k=50).fit(InDistribution(train_features=F, train_labels=y))
s = knn(test_features)

Each score class declares what it needs and its settings (see Score): a run supplies them by name and derives the
flags from the declarations, so adding a score touches its own file, this registry and, for a new kind of input
(not a setting), one resolver in utils/evaluation/inputs.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from utils.scores.adaptive import ADANEG_NEGATIVES, AdaNeg
from utils.scores.base import InDistribution, Score
from utils.scores.envisioned import EOE, EOE_BETA, EOE_NAMES, envisioned_names
from utils.scores.knn import KNN, PAPER_K, K
from utils.scores.label_mass import (
    CSP,
    CSP_WORDS,
    NEG_FRACTION,
    NEG_PERCENTILE,
    NEG_WORDS,
    GroupOthers,
    KPlusOne,
    NegativeLabels,
    NegLabel,
    Oracle,
    mine_negative_labels,
)
from utils.scores.learned_prompts import IDLike, NegPrompt
from utils.scores.linear_probe import ProbeEnergy, ProbeMaxLogit, ProbeMSP
from utils.scores.local import GLMCM, LocalMCM
from utils.scores.mahalanobis import Mahalanobis, RelativeMahalanobis
from utils.scores.multi_matching import NEGREFINE_TOP_K, NEGREFINE_WORDS, MultiMatching, NegRefine, needed_pairs
from utils.scores.pood import HEADS, POOD_HEAD, POOD_SCORES, POOD_UNAVAILABLE, Head
from utils.scores.zero_shot import MCM, Energy, MaxLogit, NegEntropy, SoftmaxVariance, ZeroShotScore

SCORES: dict[str, type[Score]] = {
    "mcm": MCM,
    "l_mcm": LocalMCM,
    "gl_mcm": GLMCM,
    "mis": MaxLogit,
    "energy": Energy,
    "entropy": NegEntropy,
    "var": SoftmaxVariance,
    "oracle": Oracle,
    "neglabel": NegLabel,
    "csp": CSP,
    "eoe": EOE,  # needs --eoe-names, a file of LLM-envisioned outlier names
    "negrefine": NegRefine,  # needs --negrefine-words, a refined negative list
    "adaneg": AdaNeg,  # order-dependent: streams ID with each OOD set
    "knn": KNN,
    "maha": Mahalanobis,
    "rmd": RelativeMahalanobis,
    "lp_msp": ProbeMSP,
    "lp_energy": ProbeEnergy,
    "lp_maxlogit": ProbeMaxLogit,
    "kplus1": KPlusOne,  # its own inputs come from a checkpoint (supplied_by)
    "group": GroupOthers,
    "negprompt": NegPrompt,
    "idlike": IDLike,
    **POOD_SCORES,  # pytorch-ood's detectors on the cached features: pood:vim, pood:gen, ... (utils/scores/pood.py)
}
ALIASES = {"maxlogit": "mis", "mahalanobis": "maha", "relative_mahalanobis": "rmd"}


def canonical(name: str) -> str:
    """The registry name of `name` (case-insensitive, aliases resolved); ValueError listing SCORES if unknown, or
    saying why for a pytorch-ood detector that cannot run on cached features."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in POOD_UNAVAILABLE:
        raise ValueError(f"{name} is not available: it {POOD_UNAVAILABLE[key]}")
    if key not in SCORES:
        raise ValueError(f"unknown score '{name}'; known: {', '.join([*SCORES, *ALIASES])}")
    return key


def build_score(name: str, **kwargs: Any) -> Score:
    """An unfitted score by name, with its hyper-parameters as keyword arguments."""
    return SCORES[canonical(name)](**kwargs)


def needs_text(name: str) -> bool:
    """Whether the score compares images with text (so needs a model with a text encoder)."""
    cls = SCORES[canonical(name)]
    return "text_features" in cls.needs or cls.reads_text


def listing() -> list[tuple[str, str]]:
    """(name, what it is) for every score, from its docstring's first paragraph; then each pytorch-ood detector that
    cannot run on cached features, with the reason (what --list-scores prints)."""
    rows = [
        (name, " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())) for name, cls in SCORES.items()
    ]
    return rows + [(name, f"unavailable: {reason}") for name, reason in POOD_UNAVAILABLE.items()]


def resolve_scores(names: Sequence[str]) -> list[str]:
    """Registry names for user-given names, `all` expanded (to the scores without `not_in_all`), duplicates dropped,
    order kept."""
    resolved: list[str] = []
    for name in names:
        for key in [k for k, c in SCORES.items() if not c.not_in_all] if name.lower() == "all" else [canonical(name)]:
            if key not in resolved:
                resolved.append(key)
    return resolved


__all__ = [
    "ADANEG_NEGATIVES",
    "ALIASES",
    "CSP_WORDS",
    "EOE_BETA",
    "EOE_NAMES",
    "HEADS",
    "NEGREFINE_TOP_K",
    "NEGREFINE_WORDS",
    "NEG_FRACTION",
    "NEG_PERCENTILE",
    "NEG_WORDS",
    "PAPER_K",
    "POOD_HEAD",
    "POOD_UNAVAILABLE",
    "SCORES",
    "Head",
    "InDistribution",
    "K",
    "MultiMatching",
    "NegativeLabels",
    "Score",
    "ZeroShotScore",
    "build_score",
    "canonical",
    "envisioned_names",
    "listing",
    "mine_negative_labels",
    "needed_pairs",
    "needs_text",
    "resolve_scores",
]  # fmt: skip

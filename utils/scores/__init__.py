"""The score registry: every name `--score` accepts. Higher = more in-distribution, always."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from utils.scores.base import InDistribution, Score
from utils.scores.zero_shot import MCM, MaxLogit

SCORES: dict[str, type[Score]] = {
    "mcm": MCM,
    "mis": MaxLogit,
}
ALIASES = {"maxlogit": "mis"}


def canonical(name: str) -> str:
    """The registry name of `name` (case-insensitive, aliases resolved); ValueError listing SCORES if unknown."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SCORES:
        raise ValueError(f"unknown score '{name}'; known: {', '.join(sorted([*SCORES, *ALIASES]))}")
    return key


def build_score(name: str, **kwargs: Any) -> Score:
    """An unfitted score by name, with its hyper-parameters as keyword arguments."""
    return SCORES[canonical(name)](**kwargs)


def resolve_scores(names: Sequence[str]) -> list[str]:
    """Registry names for user-given names, `all` expanded, duplicates dropped, order kept."""
    resolved: list[str] = []
    for name in names:
        for key in SCORES if name.lower() == "all" else [canonical(name)]:
            if key not in resolved:
                resolved.append(key)
    return resolved


__all__ = ["ALIASES", "SCORES", "InDistribution", "Score", "build_score", "canonical", "resolve_scores"]

"""The settings of an evaluation run, built by keyword from the parsed arguments (or by hand in a notebook)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from utils.prompts import TEMPLATE_SETS, Template
from utils.settings import Setting


@dataclass
class EvalOptions:
    """The run's own options, and the scores' settings by name (declared on the scores: utils/settings.py)."""

    templates: Sequence[Template] = TEMPLATE_SETS["single"]
    batch_size: int = 256
    workers: int = 4
    bootstrap: int = 0
    seed: int = 0
    extra_metrics: Sequence[str] = ()  # EXTRA_METRICS names (one codebase's definitions)
    settings: dict[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 0.5, "k": [10]}; absent: default

    def value(self, setting: Setting) -> Any:
        """The run's value of `setting`: given, else its declared default."""
        return self.settings.get(setting.name, setting.default)

    def with_settings(self, values: dict[str, Any]) -> EvalOptions:
        """These options with some settings changed (a --select choice)."""
        return replace(self, settings={**self.settings, **values})

"""Paper presets: everything a paper's protocol fixes, in one file under configs/presets/, with its published numbers.

A preset's `settings` are eval_ood_detection.py arguments by destination name (`id_name`, `out`, `templates`, ...);
a flag the user gives that conflicts with one is an error, never silently overridden. Its `defaults` (the model
and weights the paper used) apply unless the user names others; the published numbers are then shown but marked
as not comparable. `published` holds the paper's numbers per score, OOD set and metric (ours whose definition the
paper's code used, e.g. FPR95_MCM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.data.words import is_release_pool
from utils.errors import UserError
from utils.scores import ALIASES, SCORES, canonical

PRESETS_DIR = Path(__file__).parents[2] / "configs" / "presets"
# Arguments that, when set, make a run's numbers differ from the paper's whatever the preset fixes.
NOT_COMPARABLE_WHEN_SET = {"ckpt": "other weights (--ckpt)", "limit": "a subset of the data (--limit)",
                           "neg_words": "another word pool (--neg-words)",
                           "csp_words": "another word pool (--csp-words)",
                           "negrefine_words": "another refined list (--negrefine-words)",
                           "shots": "a few-shot train split (--shots)",
                           "classnames": "other class names (--classnames)",
                           "select": "hyper-parameters chosen on validation data (--select)",
                           "transform": "a model transform the paper did not use (--transform)",
                           "shifted_id": "shifted sets counted as ID (--shifted-id)"}  # fmt: skip
# Settings a preset cannot fix, a file only the user can supply; its `differences` say which file the paper used.
USER_FILES = {"eoe_names": "the envisioned outlier names (--eoe-names)"}
# a list flag -> {a preset's score: the release whose own lists (tools/neglabel_words.py) the flag may name, the
# paper's, so comparable}; AdaNeg reads NegLabel's files its own way, so --neg-words has a release per score
RELEASE_POOLS = {"neg_words": {"neglabel": "neglabel", "adaneg": "adaneg"}, "csp_words": {"csp": "csp"},
                 "negrefine_words": {"negrefine": "negrefine"}}  # fmt: skip
UNORDERED = {"score", "out", "extra_metrics", "ood_split"}  # list arguments whose order does not matter


@dataclass(frozen=True)
class Preset:
    name: str
    paper: str
    settings: dict[str, Any]
    published: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # score -> OOD set -> metric
    defaults: dict[str, Any] = field(default_factory=dict)  # e.g. {"model": "ViT-B-16", "pretrained": "openai"}
    table: str = ""  # which table of the paper `published` comes from
    source: str = ""  # where the numbers and the protocol's details were read
    differences: tuple[str, ...] = ()  # what we do not reproduce exactly, said once per run


def list_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> Preset:
    """The preset configs/presets/NAME.json; unknown names list the known ones."""
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown preset '{name}'; known: {', '.join(list_presets())}")
    saved = json.loads(path.read_text())
    try:
        return Preset(name=name, paper=saved["paper"], settings=dict(saved["settings"]),
                      published=saved.get("published", {}), table=saved.get("table", ""),
                      source=saved.get("source", ""), defaults=saved.get("defaults", {}),
                      differences=tuple(saved.get("differences", ())))  # fmt: skip
    except (KeyError, TypeError) as err:
        raise UserError(f"preset file {path} is damaged: {type(err).__name__}: {err}") from err


def apply_preset(preset: Preset, values: dict[str, Any], given: set[str], flags: dict[str, str]) -> dict[str, Any]:
    """`values` (parsed arguments by destination) with the preset's settings in; a `given` argument that differs
    from the preset's is a UserError naming the flag (`flags`: destination -> option string)."""
    unknown = [k for k in [*preset.settings, *preset.defaults] if k not in values]
    if unknown:
        raise UserError(f"preset {preset.name} sets unknown arguments {unknown}")
    for key, value in preset.settings.items():
        if key in given and _normal(key, values[key]) != _normal(key, value):
            raise UserError(f"--preset {preset.name} sets {flags.get(key, key)} {_shown(value)}; it conflicts with "
                            f"{flags.get(key, key)} {_shown(values[key])} given here: drop one of them")  # fmt: skip
    defaults = {k: v for k, v in preset.defaults.items() if k not in given}
    return {**values, **defaults, **preset.settings}


def _normal(key: str, value: Any) -> Any:
    """A value as compared with a preset's: score names canonical, order-free lists as sets."""
    if key == "score":  # case-insensitive, with aliases; an unknown name is reported later, by the score registry
        value = [canonical(v) if v.lower() in ALIASES or v.lower() in SCORES else v for v in value]
    return frozenset(value) if key in UNORDERED and isinstance(value, list) else value


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def comparable(preset: Preset, values: dict[str, Any]) -> str | None:
    """Why this run's numbers cannot be compared with the published ones (another model, weights, data), or None."""
    pairs = preset.defaults.items()
    different = [f"{k} {values.get(k)} (published: {v})" for k, v in pairs if values.get(k) != v]
    different += [why for key, why in NOT_COMPARABLE_WHEN_SET.items() if values.get(key) not in (None, [])
                  and key not in preset.settings and not _release_pool(key, values[key], preset)]  # fmt: skip
    return "; ".join(different) or None


def _release_pool(key: str, value: Any, preset: Preset) -> bool:
    """A word-pool flag naming the paper's own lists, as tools/neglabel_words.py converts them."""
    releases = RELEASE_POOLS.get(key, {})
    return any(is_release_pool(value, releases[s]) for s in preset.settings.get("score", []) if s in releases)


def with_published(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """Table rows with `<metric>_published` and `<metric>_diff` (ours − published) where the paper gives a number."""
    out = []
    for row in rows:
        row = dict(row)
        for metric, number in preset.published.get(row["score"], {}).get(row["ood"], {}).items():
            row[f"{metric}_published"] = number
            if isinstance(row.get(metric), float):
                row[f"{metric}_diff"] = round(row[metric] - number, 2)
        out.append(row)
    return out

"""A checkpoint read once: its weights and the score contract a fine-tuning method wrote into it.

The contract is what a fine-tuning method hands to its score through `final.pt`: training writes it (utils/training/
checkpoints.py save_final), evaluation reads it here; neither side imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from utils.errors import UserError
from utils.models.prompt_context import LearnedTemplate, PromptContext
from utils.models.weights import read_file, state_dict_of
from utils.prompts import Template, load_templates

CONTRACT_KEY = "score_contract"


@dataclass(frozen=True)
class ScoreContract:
    """What a fine-tuned checkpoint supplies to scores, by score-input name.

    `texts` are prompts that evaluation encodes with the checkpoint's own text tower (e.g. the K+1 method's OOD
    prompt); `values` are plain values (e.g. class groups as indices into `classnames`, so they are supplied only
    when the ID set has exactly these classes); `logit_scale` is the learned one at the end of training;
    `class_templates` the templates its class prompts were trained with (empty: not recorded); `context` a learned
    prompt context [tokens, width] (CoOp, LoCoOp), which then makes every class prompt, followed by `context_suffix`;
    `learned` prompts made of learned vectors, by score-input name (NegPrompt's negatives, ID-Like's OOD prompts:
    see `LearnedPrompts`); `outliers` the auxiliary pools it was trained on as outliers (dataset names), which are
    no fair test sets for it.
    """

    method: str
    classnames: tuple[str, ...]
    logit_scale: float
    texts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    class_templates: tuple[str, ...] = ()
    context: tuple[tuple[float, ...], ...] | None = None  # [tokens][width]
    outliers: tuple[str, ...] = ()
    context_suffix: str = "."
    learned: dict[str, LearnedPrompts] = field(default_factory=dict)

    @property
    def inputs(self) -> set[str]:
        """Every score input this checkpoint can supply."""
        return {*self.texts, *self.values, *self.learned, "logit_scale"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], path: str) -> ScoreContract:
        try:
            contract = cls(
                method=str(saved["method"]),
                classnames=tuple(str(c) for c in saved["classnames"]),
                logit_scale=float(saved["logit_scale"]),
                texts={str(k): tuple(str(t) for t in v) for k, v in saved.get("texts", {}).items()},
                values=dict(saved.get("values", {})),
                class_templates=tuple(str(t) for t in saved.get("class_templates", ())),
                context=_matrix(saved.get("context")),
                outliers=tuple(str(name) for name in saved.get("outliers", ())),
                context_suffix=str(saved.get("context_suffix", ".")),
                learned={str(k): LearnedPrompts.from_dict(v) for k, v in saved.get("learned", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{path}: its {CONTRACT_KEY} entry is damaged ({type(err).__name__}: {err})") from err
        return contract


@dataclass(frozen=True)
class LearnedPrompts:
    """Prompts of learned vectors: context k of `contexts` [K][tokens][width] before each of `names` (None: the
    ID class names), then `suffix`; encoded as [K, len(names), D]."""

    contexts: tuple[tuple[tuple[float, ...], ...], ...]
    names: tuple[str, ...] | None = None
    suffix: str = "."

    @classmethod
    def of(cls, contexts: torch.Tensor, names: tuple[str, ...] | None = None, suffix: str = ".") -> LearnedPrompts:
        """From a [K, tokens, width] tensor."""
        rows = contexts.detach().float().cpu().tolist()
        return cls(tuple(tuple(tuple(row) for row in context) for context in rows), names, suffix)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> LearnedPrompts:
        contexts = tuple(_matrix(context) for context in saved["contexts"])
        if not contexts or len({(len(c), len(c[0])) for c in contexts}) != 1:
            raise ValueError("learned prompts need one or more contexts of one shape")
        names = saved.get("names")
        return cls(contexts, None if names is None else tuple(str(n) for n in names), str(saved.get("suffix", ".")))

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.contexts)


def _matrix(rows: Any) -> tuple[tuple[float, ...], ...] | None:
    """A saved [tokens, width] context as nested tuples (so contracts compare by value); ValueError if not one."""
    if rows is None:
        return None
    matrix = tuple(tuple(float(v) for v in row) for row in rows)
    if not matrix or len({len(row) for row in matrix}) != 1 or not matrix[0]:
        raise ValueError("the prompt context must be a non-empty [tokens, width] matrix")
    return matrix


@dataclass(frozen=True)
class Checkpoint:
    """A `--ckpt` file as read once: its weights, and its score contract (None for plain weights)."""

    path: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    contract: ScoreContract | None = None


def read_checkpoint(path: str | None, contract: bool = True) -> Checkpoint | None:
    """The checkpoint at `path` (None without one), the file read once; an unreadable file is one UserError.
    `contract=False`: its weights alone (a damaged contract is not read)."""
    if not path:
        return None
    saved = read_file(path)
    return Checkpoint(path, state_dict_of(saved, path), _contract(saved, path) if contract else None)


def _contract(saved: object, path: str) -> ScoreContract | None:
    if not isinstance(saved, dict):
        return None
    if CONTRACT_KEY in saved:
        return ScoreContract.from_dict(saved[CONTRACT_KEY], path)
    if {"method", "classnames", "logit_scale"} <= saved.keys():  # final.pt of the toolkit before the contract
        return ScoreContract.from_dict(_earlier_layout(saved), path)
    return None


def _earlier_layout(saved: dict[str, Any]) -> dict[str, Any]:
    """The contract of a final.pt that kept its method's metadata as top-level keys (ood_prompt, groups, ...)."""
    texts, values = {}, {}
    if "ood_prompt" in saved:
        texts["ood_prompt_features"] = [saved["ood_prompt"]]
    if "groups" in saved and "others_prompt" in saved:
        texts["others_features"] = [saved["others_prompt"].format(g["name"]) for g in saved["groups"]]
        values["groups"] = [list(g["classes"]) for g in saved["groups"]]
    return {"method": saved["method"], "classnames": saved["classnames"], "logit_scale": saved["logit_scale"],
            "texts": texts, "values": values}  # fmt: skip


def class_templates(spec: str | None, contract: ScoreContract | None) -> tuple[Template, ...]:
    """The class prompts of a run: --templates when given, else the checkpoint's learned context, else CLIP's."""
    if spec is None and contract is not None and contract.context is not None:
        return (LearnedTemplate(PromptContext(torch.tensor(contract.context), contract.context_suffix)),)
    return load_templates(spec or "single")

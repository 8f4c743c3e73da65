"""Checkpoints: atomic saving, RNG states for exact resume, and the score contract of fine-tuned models.

The contract is what a fine-tuning method hands to its score through `final.pt`: written and read here only.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_path
from utils.errors import UserError
from utils.models.prompt_context import LearnedTemplate, PromptContext
from utils.models.weights import read_state_dict
from utils.prompts import Template, load_templates

CONTRACT_KEY = "score_contract"


@dataclass(frozen=True)
class ScoreContract:
    """What a fine-tuned checkpoint supplies to scores, by score-input name.

    `texts` are prompts that evaluation encodes with the checkpoint's own text tower (e.g. the K+1 method's OOD
    prompt); `values` are plain values (e.g. class groups as indices into `classnames`, so they are supplied only
    when the ID set has exactly these classes); `logit_scale` is the learned one at the end of training;
    `class_templates` the templates its class prompts were trained with (empty: not recorded); `context` a learned
    prompt context [tokens, width] (CoOp, LoCoOp), which then makes every class prompt.
    """

    method: str
    classnames: tuple[str, ...]
    logit_scale: float
    texts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    class_templates: tuple[str, ...] = ()
    context: tuple[tuple[float, ...], ...] | None = None  # [tokens][width]

    @property
    def inputs(self) -> set[str]:
        """Every score input this checkpoint can supply."""
        return {*self.texts, *self.values, "logit_scale"}

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
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(f"{path}: its {CONTRACT_KEY} entry is damaged ({type(err).__name__}: {err})") from err
        return contract


def _matrix(rows: Any) -> tuple[tuple[float, ...], ...] | None:
    """A saved [tokens, width] context as nested tuples (so contracts compare by value); ValueError if not one."""
    if rows is None:
        return None
    matrix = tuple(tuple(float(v) for v in row) for row in rows)
    if not matrix or len({len(row) for row in matrix}) != 1 or not matrix[0]:
        raise ValueError("the prompt context must be a non-empty [tokens, width] matrix")
    return matrix


def class_templates(spec: str | None, contract: ScoreContract | None) -> tuple[Template, ...]:
    """The class prompts of a run: --templates when given, else the checkpoint's learned context, else CLIP's."""
    if spec is None and contract is not None and contract.context is not None:
        return (LearnedTemplate(PromptContext(torch.tensor(contract.context))),)
    return load_templates(spec or "single")


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], **extra: Any) -> None:
    """Atomically save {"state_dict": ..., **extra}: tensors and plain values only, so weights_only loading reads it."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}, tmp)


def save_final(path: str | Path, state_dict: dict[str, torch.Tensor], contract: ScoreContract, **extra: Any) -> None:
    """A fine-tuned model's final.pt: its weights, the score contract, and plain metadata (`--ckpt` reads it)."""
    save_checkpoint(path, state_dict, **{CONTRACT_KEY: contract.to_dict()}, **extra)


def read_contract(path: str | None) -> ScoreContract | None:
    """The score contract saved in a checkpoint; None without a checkpoint or for plain weights."""
    if not path:
        return None
    read_state_dict(path)  # a clear error for unreadable files
    if path.endswith(".safetensors"):
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
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


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values (so weights_only loading reads it back)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype("int64")), *numpy_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    random.setstate(state["python"])


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A `last.pt` written by this project (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)

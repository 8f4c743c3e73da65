"""Checkpoints: atomic saving, RNG states for exact resume, and final.pt with the method's score contract."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_path
from utils.models.checkpoint import CONTRACT_KEY, ScoreContract


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], **extra: Any) -> None:
    """Atomically save {"state_dict": ..., **extra}: tensors and plain values only, so weights_only loading reads it."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}, tmp)


def save_final(path: str | Path, state_dict: dict[str, torch.Tensor], contract: ScoreContract, **extra: Any) -> None:
    """A fine-tuned model's final.pt: its weights, the score contract, and plain metadata (`--ckpt` reads it)."""
    save_checkpoint(path, state_dict, **{CONTRACT_KEY: contract.to_dict()}, **extra)


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

"""The towers of a CLIP model, freezing one, and the check that a frozen tower did not move."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from utils.models.weights import fingerprint_tensors
from utils.settings import Setting

FREEZE = ("none", "text", "image")  # what --freeze accepts; "all" (nothing trains) is for frozen-feature protocols
FROZEN_TOWER = Setting(
    "freeze", "none", "tower kept fixed (coop and locoop always freeze all of CLIP)", "toolkit", choices=FREEZE
)


def image_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The image encoder of a CLIP model (`visual`) or of an image-only wrapper (`net`)."""
    return model.visual if hasattr(model, "visual") else model.net


def tower_parameters(model: torch.nn.Module, tower: str) -> list[torch.nn.Parameter]:
    """The parameters of `tower`: image (the image encoder), text (everything else: text encoder and logit scale),
    all, or none."""
    if tower not in (*FREEZE, "all"):
        raise ValueError(f"unknown tower '{tower}'; choose one of {', '.join((*FREEZE, 'all'))}")
    if tower in ("none", "all"):
        return [] if tower == "none" else list(model.parameters())
    image = {id(p) for p in image_tower(model).parameters()}
    return [p for p in model.parameters() if (id(p) in image) == (tower == "image")]


def freeze(model: torch.nn.Module, tower: str) -> list[torch.nn.Parameter]:
    """requires_grad off for `tower`, on for every other parameter; returns the trainable ones."""
    fixed = {id(p) for p in tower_parameters(model, tower)}
    for param in model.parameters():
        param.requires_grad_(id(param) not in fixed)
    return [p for p in model.parameters() if p.requires_grad]


def tower_state(model: torch.nn.Module, tower: str) -> dict[str, torch.Tensor]:
    """The entries of the model's state dict (parameters and buffers, e.g. BatchNorm statistics) in `tower`."""
    image = {id(t) for t in (*image_tower(model).parameters(), *image_tower(model).buffers())}
    state = model.state_dict(keep_vars=True)
    if tower in ("none", "all"):
        return {} if tower == "none" else state
    return {k: t for k, t in state.items() if (id(t) in image) == (tower == "image")}


@contextmanager
def kept_frozen(model: torch.nn.Module, tower: str) -> Iterator[None]:
    """Check that `tower`'s weights and buffers are bit-identical after the block (MoCo's sanity check)."""
    tensors = tower_state(model, tower)
    before = fingerprint_tensors(tensors) if tensors else None
    yield
    if before is not None and fingerprint_tensors(tower_state(model, tower)) != before:
        raise RuntimeError(f"the frozen {tower} tower's weights changed during training")

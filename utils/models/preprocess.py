"""The model's eval transform with another resize interpolation: papers' code often resizes bilinearly
(torchvision's default; MCM, NegLabel) where CLIP and open_clip resize bicubically."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from utils.errors import UserError

INTERPOLATIONS = {"model": None, "bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def with_interpolation(preprocess: Callable, mode: str) -> Callable:
    """A copy of `preprocess` whose Resize steps use `mode` ("model": unchanged); everything else is kept."""
    if mode not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation '{mode}'; known: {', '.join(INTERPOLATIONS)}")
    if INTERPOLATIONS[mode] is None:
        return preprocess
    steps = getattr(preprocess, "transforms", None)
    if not any(isinstance(step, transforms.Resize) for step in steps or []):
        raise UserError(f"--interpolation {mode}: the model's transform has no Resize step to change ({preprocess})")
    changed = copy.deepcopy(preprocess)
    for step in changed.transforms:
        if isinstance(step, transforms.Resize):
            step.interpolation = INTERPOLATIONS[mode]
    return changed

"""The model's eval transform with another resize interpolation: papers' code often resizes bilinearly
(torchvision's default; MCM, NegLabel) where CLIP and open_clip resize bicubically."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

from utils.errors import UserError

if TYPE_CHECKING:
    import torch

# torchvision is imported where used: eval_ood_detection.py's --help lists these names without it.
INTERPOLATIONS = {"model": None, "bilinear": "BILINEAR", "bicubic": "BICUBIC"}  # torchvision InterpolationMode names


def with_interpolation(preprocess: Callable, mode: str) -> Callable:
    """A copy of `preprocess` whose Resize steps use `mode` ("model": unchanged); everything else is kept."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

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
            step.interpolation = InterpolationMode[INTERPOLATIONS[mode]]
    return changed


# Steps of a PIL eval transform that the tensor pipeline's input already satisfies: RGB uint8 pixels.
_RGB_STEPS = {"MaybeConvertMode", "_convert_to_rgb", "convert_to_rgb"}
_TO_FLOAT_STEPS = {"ToTensor", "MaybeToTensor"}


class TensorPreprocess:
    """The model's own PIL eval transform restated on uint8 RGB tensors [3, H, W] on any device: its Resize (size,
    interpolation, max_size; antialiased as PIL), CenterCrop and Normalize are read from the transform itself, in
    its order, so no constant is copied. Raises ValueError for a step it cannot restate."""

    def __init__(self, preprocess: Callable):
        from torchvision import transforms

        self.steps: list[tuple[str, object]] = []
        for step in getattr(preprocess, "transforms", None) or [preprocess]:
            name = getattr(step, "__name__", type(step).__name__)
            if isinstance(step, transforms.Resize):
                self.steps.append(("resize", step))
            elif isinstance(step, transforms.CenterCrop):
                self.steps.append(("crop", step))
            elif isinstance(step, transforms.Normalize):
                self.steps.append(("normalize", step))
            elif name in _TO_FLOAT_STEPS:
                self.steps.append(("float", None))
            elif name not in _RGB_STEPS:
                raise ValueError(f"the tensor pipeline cannot restate the transform step {step!r}")
        if ("float", None) not in self.steps:
            raise ValueError("the transform never makes a tensor (no ToTensor step)")

    def __call__(self, images: list[torch.Tensor]) -> torch.Tensor:
        """A float32 batch [B, 3, h, w] on the images' device, equal to the PIL transform up to resampling rounding."""
        import torch
        from torchvision.transforms.v2 import functional as tf

        out = []
        for image in images:
            for kind, step in self.steps:
                if kind == "resize":
                    image = tf.resize(image, step.size, step.interpolation, step.max_size, antialias=True)
                elif kind == "crop":
                    image = tf.center_crop(image, step.size)
                elif kind == "float":
                    image = image.float().div_(255)
                else:
                    image = tf.normalize(image, step.mean, step.std)
            out.append(image)
        return torch.stack(out)

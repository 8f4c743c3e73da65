"""torch.compile of the image tower for extraction, falling back to eager execution, with one warning, wherever
compilation or the compiled call fails (an unsupported op, no C++ compiler for inductor on CPU, ...)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from utils.models.loading import ModelBundle

TOWERS = ("visual", "net")  # open_clip's image tower; the timm backbone inside ImageOnly


class CompiledOrEager(torch.nn.Module):
    """The compiled module until it fails once, then the eager one for good; outputs are the eager module's."""

    def __init__(self, module: torch.nn.Module, compile: Callable = torch.compile):
        super().__init__()
        self.eager = module
        self.compiled = compile(module)
        self.failed: str | None = None

    def forward(self, *args: object, **kwargs: object) -> object:
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # whatever the compiler raises, eager still works
                self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err) else ''}"
                warnings.warn(f"--compile: torch.compile of the image tower failed ({self.failed}); "
                              f"continuing without it", stacklevel=2)  # fmt: skip
        return self.eager(*args, **kwargs)


def compile_image_tower(bundle: ModelBundle, compile: Callable = torch.compile) -> ModelBundle:
    """The bundle with its image tower compiled (in place: the same model object); features are unchanged up to
    float rounding, so the cache key does not change."""
    tower = next((name for name in TOWERS if isinstance(getattr(bundle.model, name, None), torch.nn.Module)), None)
    if tower is None:
        warnings.warn(f"--compile: {bundle.name} has no image tower to compile; continuing without it", stacklevel=2)
        return bundle
    if not isinstance(getattr(bundle.model, tower), CompiledOrEager):
        setattr(bundle.model, tower, CompiledOrEager(getattr(bundle.model, tower), compile))
    return bundle

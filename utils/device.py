"""Device choice, mixed precision (autocast) for inference and training, and the image pipelines' names."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from utils.errors import UserError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the scripts' --help reads these names without it.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"auto": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # torch dtype names
PIPELINES = ("auto", "pil", "tensor")  # how images reach the device: utils/features/images.py


def resolve_device(name: str) -> torch.device:
    """Map `auto|cpu|cuda` (or `cuda:N`) to a torch device; asking for a missing GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)} (or cuda:N)")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype on CUDA: `auto` = bf16 where supported, else fp16; `fp32` = none. CPU: none (full
    precision), whatever is asked: what a paper's GPU run rounds to is a CUDA matter."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, PRECISIONS[precision])


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed precision for inference where it pays (CUDA), full precision elsewhere."""
    import torch

    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


def precision_tag(device: torch.device, precision: str = "auto") -> str:
    """How features computed on `device` are rounded; part of the feature cache key."""
    dtype = autocast_dtype(device, precision)
    return "fp32" if dtype is None else f"autocast-{str(dtype).removeprefix('torch.')}"

"""Device choice and mixed precision (autocast) for inference and training."""

from __future__ import annotations

import contextlib

import torch

from utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """Map `auto|cpu|cuda` (or `cuda:N`) to a torch device; asking for a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)} (or cuda:N)")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on GPUs that support it, fp16 on older ones, None (full precision) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for inference where it pays (CUDA), full precision elsewhere."""
    dtype = autocast_dtype(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)


def precision_tag(device: torch.device) -> str:
    """How features computed on `device` are rounded; part of the feature cache key."""
    dtype = autocast_dtype(device)
    return "fp32" if dtype is None else f"autocast-{str(dtype).removeprefix('torch.')}"

"""Training pieces shared by fine-tuning scripts: schedule, freezing, the epoch loop, checkpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from utils.atomic import atomic_path
from utils.device import autocast


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base rate over `warmup_steps`, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def image_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The image encoder of a CLIP model (`visual`) or of an image-only wrapper (`net`)."""
    return model.visual if hasattr(model, "visual") else model.net


def freeze_all_but(model: torch.nn.Module, trainable: torch.nn.Module) -> None:
    """requires_grad only for `trainable`'s parameters (e.g. the image tower; the text tower stays frozen)."""
    for param in model.parameters():
        param.requires_grad_(False)
    for param in trainable.parameters():
        param.requires_grad_(True)


def run_epoch(
    step: Callable[[Any], torch.Tensor],
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    description: str,
    batch_size: Callable[[Any], int],
) -> float:
    """One pass over `batches`: loss = step(batch) under autocast, backward, optimiser and schedule steps.

    Shows loss and samples/s on a progress bar; returns the mean loss.
    """
    total, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(batches, desc=description, unit="batch", dynamic_ncols=True, leave=False)
    for batch in bar:
        with autocast(device):
            loss = step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = batch_size(batch)
        total, seen = total + loss.item() * n, seen + n
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{seen / (time.perf_counter() - start):.0f}")
    bar.close()
    return total / max(1, seen)


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], **extra: Any) -> None:
    """Atomically save {"state_dict": ..., **extra}: tensors and plain values only, so weights_only loading reads it."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}, tmp)


def rng_state() -> dict[str, Any]:
    """Every random generator's state as tensors and plain values (so weights_only loading reads it back)."""
    import random

    import numpy as np

    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype("int64")), *numpy_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    random.setstate(state["python"])


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A `last.pt` written by this project (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)

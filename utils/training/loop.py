"""The one epoch loop of every fine-tuning path, its optimisers and learning-rate schedules, and their settings."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from utils.device import autocast, autocast_dtype
from utils.distributed import World
from utils.settings import Setting, non_negative_float, positive_float, positive_int, share

# The training settings every method shares; a method's paper may fix its own (Objective.defaults).
EPOCHS = Setting("epochs", 10, "epochs", "toolkit", type=positive_int)
LR = Setting("lr", 1e-5, "learning rate", "toolkit", type=positive_float)
WEIGHT_DECAY = Setting("weight_decay", 0.1, "weight decay", "toolkit", type=non_negative_float)
BATCH_SIZE = Setting("batch_size", 64, "images per step", "toolkit", type=positive_int)
WARMUP = Setting("warmup", 0.1, "cosine schedule: linear warm-up over this share of all steps", "toolkit", type=share)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base rate over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if not 0 <= warmup_steps < max(1, total_steps):
        raise ValueError(f"the warm-up ({warmup_steps} steps) must be shorter than all of training ({total_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_warmup_epoch_cosine(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, warmup_lr: float = 1e-5, warmup_epochs: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """CoOp's schedule (Dassl ConstantWarmupScheduler around CosineAnnealingLR, stepped per epoch): `warmup_lr`
    for the first epochs, then epoch e runs at base · ½(1 + cos(π (e − warm-up) / epochs))."""
    base = optimizer.param_groups[0]["lr"]

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        if epoch < warmup_epochs:
            return warmup_lr / base
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


NEGPROMPT_T_MAX = 50  # NegPrompt's CosineAnnealingLR(optimizer, float(50))


def negprompt_cosine(optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                     restart_step: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
    """NegPrompt's schedule (mala-lab/NegPrompt osr_nega_prompt.py, core/train_clip.py): CosineAnnealingLR with
    T_max = 50, stepped after every batch and once more after every epoch (--stepsize 30 > 0), so the rate cycles
    with period 100 steps: base · ½(1 + cos(π t / 50)), t the steps taken. Its second stage is a new process with a
    new scheduler: from `restart_step` on, t counts again from 0."""

    def factor(step: int) -> float:
        local = step - restart_step if restart_step is not None and step >= restart_step else step
        taken = local + local // max(1, steps_per_epoch)
        return 0.5 * (1.0 + math.cos(math.pi * taken / NEGPROMPT_T_MAX))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_schedule(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int, warmup: float,
                  restart_epoch: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
    """`cosine`: linear warm-up over a `warmup` share of all steps, then a per-step cosine to 0 (open_clip's);
    `coop`: CoOp's one epoch at 1e-5, then a per-epoch cosine; `negprompt`: NegPrompt's cycling cosine, restarted
    at `restart_epoch` (the method's second stage); `constant`: the base rate throughout (ID-Like's)."""
    steps = max(1, epochs * steps_per_epoch)
    restart = None if restart_epoch is None else restart_epoch * steps_per_epoch
    schedules = {
        "cosine": lambda: warmup_cosine(optimizer, steps, int(warmup * steps)),
        "coop": lambda: constant_warmup_epoch_cosine(optimizer, steps_per_epoch, epochs),
        "negprompt": lambda: negprompt_cosine(optimizer, steps_per_epoch, restart),
        "constant": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
    }
    return schedules[name]()


SCHEDULES = ("cosine", "coop", "negprompt", "constant")
SCHEDULE = Setting(
    "schedule",
    "cosine",
    "learning-rate schedule: cosine (linear warm-up over --warmup of all steps, then a per-step cosine), coop (one "
    "epoch at 1e-5, then a per-epoch cosine), negprompt (NegPrompt's cosine of period 100 steps, restarted for its "
    "second stage) or constant",
    "toolkit",
    choices=SCHEDULES,
)


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float, split: bool = True) -> list[dict]:
    """Weight decay on matrices only: gains, biases, the logit scale and bias are left out (open_clip's rule).
    `split=False`: one group, all decayed (how runs before this rule were trained; their last.pt resumes so)."""
    if not split:
        return [{"params": list(params), "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip


OPTIMIZERS = {  # (parameter groups, lr) -> optimiser; SGD as Dassl configures it for CoOp: momentum 0.9
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9),
    "plain_sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr),  # NegPrompt's: no momentum
}
OPTIMIZER = Setting("optimizer", "adamw", "optimiser; sgd has momentum 0.9, plain_sgd none", "toolkit",
                    choices=tuple(OPTIMIZERS))  # fmt: skip
ACCUMULATE = Setting("accumulate", 1, "gradient accumulation steps", "toolkit", type=positive_int)


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimiser steps in an epoch of `batches`: the last, short accumulation counts too."""
    return -(-batches // accumulate)


@dataclass
class EpochStats:
    loss: float  # mean over the samples seen
    samples: int  # samples seen by all processes
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def _any_rank(flag: bool, world: World) -> bool:
    """True on every rank if it is true on any."""
    if not world.distributed:
        return flag
    value = torch.tensor([int(flag)])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def run_epoch(
    step: Callable[[Any, int], torch.Tensor],
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    description: str,
    accumulate: int = 1,
    world: World | None = None,
    mixed: bool = True,
) -> EpochStats:
    """One pass over `loader`'s batches: loss = step(batch, index) under autocast, scaled backward, and an optimiser
    and schedule step every `accumulate` batches (and at the epoch's end: no gradient crosses an epoch).

    A batch whose images all failed to load is skipped, on every rank together (or DDP would wait forever).
    The progress bar shows the loss and samples/s. `mixed=False`: no autocast (a method whose release trains in
    fp32).
    """
    world = world or World()
    total, seen, pending, began = 0.0, 0, False, time.perf_counter()
    bar = tqdm(loader, desc=description, unit="batch", disable=not world.main, dynamic_ncols=True, leave=False)
    for index, batch in enumerate(bar):
        if _any_rank(batch.images is None, world):
            continue
        with autocast(device) if mixed else contextlib.nullcontext():
            loss = step(batch, index)
        scaler.scale(loss / accumulate).backward()
        pending = True
        if (index + 1) % accumulate == 0 or index + 1 == len(loader):
            _optimiser_step(optimizer, scheduler, scaler)
            pending = False
        total, seen = total + loss.item() * len(batch.labels), seen + len(batch.labels)
        rate = seen * world.size / (time.perf_counter() - began)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:.0f}")
    bar.close()
    if pending:  # the epoch's last batches were unreadable: flush what the earlier ones accumulated
        _optimiser_step(optimizer, scheduler, scaler)
    return EpochStats(total / max(1, seen), seen * world.size, time.perf_counter() - began)


def _optimiser_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler) -> None:
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()


def grad_scaler(device: torch.device, mixed: bool = True) -> torch.amp.GradScaler:
    """Loss scaling where autocast runs in float16 (older GPUs); a pass-through elsewhere (and without autocast)."""
    return torch.amp.GradScaler("cuda", enabled=mixed and autocast_dtype(device) == torch.float16)

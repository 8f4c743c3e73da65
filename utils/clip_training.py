"""OOD-aware CLIP fine-tuning: the loop, per-epoch atomic checkpoints, exact resume, torchrun data parallelism."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from utils.atomic import atomic_path
from utils.data import LoadedDataset
from utils.data.loading import make_loader
from utils.device import autocast, autocast_dtype
from utils.distributed import World
from utils.errors import UserError
from utils.models import ModelBundle
from utils.ood_finetune import Objective, logit_scale
from utils.training import load_training_state, rng_state, save_checkpoint, set_rng_state, warmup_cosine

FREEZE = ("none", "text", "image")  # which tower stays fixed
RESUME_MUST_MATCH = (
    "method",
    "model",
    "id_name",
    "aux",
    "seed",
    "batch_size",
    "accumulate",
    "freeze",
    "epochs",
    "lr",
    "weight_decay",
    "warmup",
)


@dataclass
class TrainConfig:
    method: str
    model: str
    id_name: str
    aux: str | None
    epochs: int = 10
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: float = 0.1
    batch_size: int = 64
    accumulate: int = 1
    freeze: str = "none"
    seed: int = 0
    workers: int = 4


def trainable_parameters(model: torch.nn.Module, freeze: str) -> list[torch.nn.Parameter]:
    """Freeze one tower (or none); everything else, the logit scale included, trains."""
    visual = {id(p) for p in model.visual.parameters()}
    for param in model.parameters():
        in_image = id(param) in visual
        param.requires_grad_(not ((freeze == "image" and in_image) or (freeze == "text" and not in_image)))
    return [p for p in model.parameters() if p.requires_grad]


def _sampler(dataset, world: World, seed: int) -> DistributedSampler:
    return DistributedSampler(
        dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed, drop_last=True
    )


class _Cycle:
    """Endless batches of the auxiliary pool, reshuffled each pass, deterministically."""

    def __init__(self, loader, sampler: DistributedSampler, epoch: int):
        self.loader, self.sampler, self.passes, self.epoch = loader, sampler, 0, epoch
        self.iterator = self._restart()

    def _restart(self):
        self.sampler.set_epoch(self.epoch * 1000 + self.passes)
        self.loader.generator.manual_seed(self.epoch * 1000 + self.passes)
        self.passes += 1
        return iter(self.loader)

    def next(self):
        for _ in range(3):
            batch = next(self.iterator, None)
            if batch is not None and batch.images is not None:
                return batch
            self.iterator = self._restart()
        raise UserError("the auxiliary pool yields no readable images")


def _any_rank(flag: bool, world: World) -> bool:
    """True on every rank if it is true on any."""
    if not world.distributed:
        return flag
    value = torch.tensor([int(flag)])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _write_log(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def train(
    bundle: ModelBundle,
    objective: Objective,
    id_train: LoadedDataset,
    aux: LoadedDataset | None,
    config: TrainConfig,
    out_dir: Path,
    world: World,
    resume: bool = False,
) -> list[dict]:
    """Train `objective` for config.epochs; writes last.pt and metrics.jsonl each epoch (rank 0). Returns the log."""
    device = bundle.device
    params = trainable_parameters(bundle.model, config.freeze)
    module = objective
    if world.distributed:
        module = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sampler = _sampler(id_train.dataset, world, config.seed)
    transform = bundle.train_preprocess or bundle.preprocess
    per_rank = max(1, config.batch_size // world.size)
    loader = make_loader(id_train.dataset, transform, per_rank, config.workers, device.type == "cuda", sampler=sampler,
                         seed=config.seed)  # fmt: skip
    if len(loader) == 0:
        raise UserError(f"{id_train.name} train has fewer images than one batch ({config.batch_size})")
    aux_sampler = aux_loader = None
    if aux is not None:
        aux_sampler = _sampler(aux.dataset, world, config.seed + 1)
        aux_loader = make_loader(aux.dataset, transform, per_rank, config.workers, device.type == "cuda",
                                 sampler=aux_sampler, seed=config.seed + 1)  # fmt: skip
    steps = config.epochs * -(-len(loader) // config.accumulate)  # the last, short accumulation steps too
    scheduler = warmup_cosine(optimizer, max(1, steps), int(config.warmup * steps))
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(device) == torch.float16)
    log: list[dict] = []
    start_epoch = 0
    last = out_dir / "last.pt"
    if resume and last.is_file():
        state = load_training_state(last)
        changed = [k for k in RESUME_MUST_MATCH if state["config"].get(k) != getattr(config, k)]
        if changed:
            raise UserError(f"--resume: {last} was trained with other settings ({', '.join(changed)}); "
                            f"use the same ones or another --out-dir")  # fmt: skip
        bundle.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, log = state["epoch"], list(state["log"])
        if world.main:
            print(f"resuming {last} after epoch {start_epoch}")
    objective.train()
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation randomness: a function of (seed, epoch)
        loader.generator.manual_seed(config.seed * 100_003 + epoch)  # worker seeds too, so resume is exact
        sampler.set_epoch(epoch)
        aux_batches = _Cycle(aux_loader, aux_sampler, epoch) if aux_loader is not None else None
        total, seen, began = 0.0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"{config.method} {epoch + 1}/{config.epochs}", unit="batch", disable=not world.main,
                   dynamic_ncols=True, leave=False)  # fmt: skip
        for step, batch in enumerate(bar):
            if _any_rank(batch.images is None, world):  # every rank skips together, or DDP would wait forever
                continue
            aux_images = aux_batches.next().images.to(device) if aux_batches else None
            with autocast(device):
                loss = module(batch.images.to(device), batch.labels.to(device), aux_images,
                              [config.seed, epoch, step, world.rank])  # fmt: skip
            scaler.scale(loss / config.accumulate).backward()
            if (step + 1) % config.accumulate == 0 or step + 1 == len(loader):  # no gradient crosses an epoch
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            total, seen = total + loss.item() * len(batch.labels), seen + len(batch.labels)
            bar.set_postfix(
                loss=f"{loss.item():.4f}", samples_per_s=f"{seen * world.size / (time.perf_counter() - began):.0f}"
            )
        bar.close()
        seconds = time.perf_counter() - began
        record = {"epoch": epoch + 1, "loss": total / max(1, seen), "lr": scheduler.get_last_lr()[0],
                  "logit_scale": logit_scale(bundle.model).item(), "samples_per_s": seen * world.size / seconds,
                  "seconds": seconds}  # fmt: skip
        log.append(record)
        if world.main:
            print(json.dumps(record))
            with atomic_path(last) as tmp:
                torch.save({"model": bundle.model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                            "epoch": epoch + 1, "config": asdict(config), "log": log}, tmp)  # fmt: skip
            _write_log(out_dir / "metrics.jsonl", log)
    objective.eval()
    return log


def save_final(
    path: Path, bundle: ModelBundle, objective: Objective, config: TrainConfig, extra: dict[str, Any]
) -> None:
    """final.pt: the weights plus what the method's score needs; `--ckpt` reads it everywhere."""
    save_checkpoint(path, bundle.model.state_dict(), method=config.method, model=config.model,
                    classnames=objective.classnames, logit_scale=logit_scale(bundle.model).item(),
                    config=asdict(config), **objective.metadata(), **extra)  # fmt: skip

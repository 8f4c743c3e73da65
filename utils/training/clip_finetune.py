"""OOD-aware CLIP fine-tuning: set-up, per-epoch atomic checkpoints, exact resume, torchrun data parallelism."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler

from utils.atomic import atomic_path
from utils.data.loaders import make_loader
from utils.errors import UserError
from utils.models.logits import logit_scale
from utils.settings import Setting
from utils.training.checkpoints import load_training_state, rng_state, save_final, set_rng_state
from utils.training.loop import (
    ACCUMULATE,
    BATCH_SIZE,
    EPOCHS,
    LR,
    OPTIMIZER,
    OPTIMIZERS,
    SCHEDULE,
    WARMUP,
    WEIGHT_DECAY,
    decay_groups,
    grad_scaler,
    make_schedule,
    optimizer_steps,
    run_epoch,
)
from utils.training.towers import FROZEN_TOWER, kept_frozen

if TYPE_CHECKING:
    from utils.data.splits import LoadedDataset
    from utils.distributed import World
    from utils.models.loading import ModelBundle
    from utils.training.objectives import Objective

RESUME_MUST_MATCH = ("method", "model", "id_name", "aux", "seed", "batch_size", "accumulate", "freeze", "epochs", "lr",
                     "weight_decay", "warmup", "shots", "optimizer", "schedule", "augment",
                     "method_options")  # fmt: skip


RENAMED_OPTIONS = {"top_k": "locoop_top_k"}  # method options recorded under an earlier name (runs resume)
AUGMENTATIONS = ("method", "model")
AUGMENT = Setting(
    "augment", "method", "training images: method = the method's paper's augmentation (coop, locoop: random resized "
    "crops of 8-100% and horizontal flips), model = the model's own training transform (the other methods use the "
    "model's either way)", "toolkit", choices=AUGMENTATIONS,
)  # fmt: skip
# every training setting, in the order finetune_clip.py lists them
TRAINING = (FROZEN_TOWER, EPOCHS, LR, WEIGHT_DECAY, BATCH_SIZE, OPTIMIZER, SCHEDULE, AUGMENT, WARMUP, ACCUMULATE)


@dataclass
class TrainConfig:
    method: str
    model: str
    id_name: str
    aux: str | None
    epochs: int = EPOCHS.default
    lr: float = LR.default
    weight_decay: float = WEIGHT_DECAY.default
    warmup: float = WARMUP.default
    batch_size: int = BATCH_SIZE.default
    accumulate: int = ACCUMULATE.default
    freeze: str = FROZEN_TOWER.default
    seed: int = 0
    workers: int = 4
    shots: int | None = None  # K training images per class (few-shot protocols), else all
    optimizer: str = OPTIMIZER.default
    schedule: str = SCHEDULE.default
    augment: str = AUGMENT.default
    method_options: dict[str, Any] = field(default_factory=dict)  # the objective's own settings (n_ctx, groups, ...)


def _sampler(dataset, world: World, seed: int) -> DistributedSampler:
    return DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed,
                              drop_last=True)  # fmt: skip


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


@dataclass
class _Run:
    """Everything one training run steps: loaders, optimiser, schedule, scaler, and where it logs."""

    module: torch.nn.Module  # the objective, DDP-wrapped under torchrun
    loader: Any
    sampler: DistributedSampler
    aux_loader: Any
    aux_sampler: DistributedSampler | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def _set_up(bundle: ModelBundle, objective: Objective, id_train: LoadedDataset, aux: LoadedDataset | None,
            config: TrainConfig, world: World, split_decay: bool = True) -> _Run:  # fmt: skip
    device = bundle.device
    params = objective.trainable(config.freeze)
    module = objective
    if world.distributed:
        module = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=objective.unused_parameters,
        )  # fmt: skip
    optimizer = OPTIMIZERS[config.optimizer](decay_groups(params, config.weight_decay, split_decay), config.lr)
    transform = (
        objective.train_transform() if config.augment == "method" else bundle.train_preprocess or bundle.preprocess
    )
    if config.batch_size < world.size:
        raise UserError(f"--batch-size {config.batch_size} is the global batch: under torchrun it needs at least one "
                        f"image for each of the {world.size} processes")  # fmt: skip
    per_rank, pin = max(1, config.batch_size // world.size), device.type == "cuda"
    sampler = _sampler(id_train.dataset, world, config.seed)
    drop = objective.drop_last and len(sampler) >= per_rank  # Dassl's rule: only when a full batch exists
    loader = make_loader(id_train.dataset, transform, per_rank, config.workers, pin, sampler=sampler, seed=config.seed,
                         drop_last=drop)  # fmt: skip
    if len(loader) == 0:
        raise UserError(f"{id_train.name} train has fewer images than one batch ({config.batch_size})")
    aux_sampler = aux_loader = None
    if aux is not None:
        aux_sampler = _sampler(aux.dataset, world, config.seed + 1)
        aux_loader = make_loader(aux.dataset, transform, per_rank, config.workers, pin, sampler=aux_sampler,
                                 seed=config.seed + 1)  # fmt: skip
    per_epoch = optimizer_steps(len(loader), config.accumulate)
    scheduler = make_schedule(config.schedule, optimizer, per_epoch, config.epochs, config.warmup,
                              objective.restart_epoch())  # fmt: skip
    return _Run(module, loader, sampler, aux_loader, aux_sampler, optimizer, scheduler,
                grad_scaler(device, objective.mixed_precision))  # fmt: skip


def _resume(
    state: dict, last: Path, bundle: ModelBundle, objective: Objective, run: _Run, config: TrainConfig
) -> tuple[int, list[dict]]:
    """Load `last.pt`'s `state` into the model and every stepping state; (epochs done, log so far)."""
    saved, now = dict(state["config"]), asdict(config)
    defaults = asdict(TrainConfig(config.method, config.model, config.id_name, config.aux))  # settings added later
    defaults["method_options"] = now["method_options"]  # not recorded before: taken as they are now
    if "method_options" in saved:
        saved["method_options"] = {RENAMED_OPTIONS.get(k, k): v for k, v in saved["method_options"].items()}
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k, defaults[k]) != now[k]]
    if changed:
        raise UserError(f"--resume: {last} was trained with other settings ({', '.join(changed)}); "
                        f"use the same ones or another --out-dir")  # fmt: skip
    bundle.model.load_state_dict(state["model"])
    missing = set(objective.learned_state()) - set(state.get("learned", {}))
    if missing:
        raise UserError(f"--resume: {last} lacks the method's own parameters ({', '.join(sorted(missing))})")
    objective.load_state_dict(state.get("learned", {}), strict=False)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"], list(state["log"])


def _write_log(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _save_epoch(out_dir: Path, objective: Objective, run: _Run, config: TrainConfig, epoch: int, log: list[dict]):
    with atomic_path(out_dir / "last.pt") as tmp:
        torch.save({"model": objective.model.state_dict(), "learned": objective.learned_state(),
                    "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng_state(),
                    "epoch": epoch, "config": asdict(config), "log": log}, tmp)  # fmt: skip
    _write_log(out_dir / "metrics.jsonl", log)


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
    """Train `objective` for config.epochs; writes last.pt and metrics.jsonl each epoch (rank 0). Returns the log.

    A frozen tower (config.freeze) is checked to be unchanged at the end.
    """
    objective.check(config)
    state = load_training_state(out_dir / "last.pt") if resume and (out_dir / "last.pt").is_file() else None
    one_group = state is not None and len(state["optimizer"]["param_groups"]) == 1  # written before decay_groups
    run = _set_up(bundle, objective, id_train, aux, config, world, split_decay=not one_group)
    device, start_epoch, log = bundle.device, 0, []
    if state is not None:
        start_epoch, log = _resume(state, out_dir / "last.pt", bundle, objective, run, config)
        if world.main:
            print(f"resuming {out_dir / 'last.pt'} after epoch {start_epoch}")
    objective.train()
    with kept_frozen(bundle.model, objective.frozen or config.freeze):
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation randomness: a function of (seed, epoch)
            run.loader.generator.manual_seed(config.seed * 100_003 + epoch)  # worker seeds too: resume is exact
            run.sampler.set_epoch(epoch)
            aux_batches = _Cycle(run.aux_loader, run.aux_sampler, epoch) if run.aux_loader is not None else None

            def step(batch, index: int, epoch: int = epoch, aux_batches: _Cycle | None = aux_batches) -> torch.Tensor:
                aux_images = aux_batches.next().images.to(device) if aux_batches else None
                return run.module(batch.images.to(device), batch.labels.to(device), aux_images,
                                  [config.seed, epoch, index, world.rank])  # fmt: skip

            stats = run_epoch(step, run.loader, run.optimizer, run.scheduler, run.scaler, device,
                              f"{config.method} {epoch + 1}/{config.epochs}", config.accumulate, world,
                              objective.mixed_precision)  # fmt: skip
            log.append({"epoch": epoch + 1, "loss": stats.loss, "lr": run.scheduler.get_last_lr()[0],
                        "logit_scale": logit_scale(bundle.model).item(), "samples_per_s": stats.samples_per_s,
                        "seconds": stats.seconds})  # fmt: skip
            if world.main:
                print(json.dumps(log[-1]))
                _save_epoch(out_dir, objective, run, config, epoch + 1, log)
    objective.eval()
    return log


def save_model(path: Path, bundle: ModelBundle, objective: Objective, config: TrainConfig, **extra: Any) -> None:
    """final.pt: the weights and the method's score contract (with the outlier pool it trained on, which evaluation
    refuses as a test set); `--ckpt` reads it everywhere."""
    contract = replace(objective.contract(config.method), outliers=(config.aux,) if config.aux else ())
    save_final(path, bundle.model.state_dict(), contract, model=config.model, config=asdict(config), **extra)

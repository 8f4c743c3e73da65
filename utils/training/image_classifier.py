"""End-to-end fine-tuning of a model's image encoder with a linear head (the text tower never changes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.loaders import make_loader
from utils.device import autocast
from utils.models.logits import zero_shot_logit_scale
from utils.settings import Setting, positive_float
from utils.training.loop import EPOCHS, LR, WARMUP, WEIGHT_DECAY, grad_scaler, run_epoch, warmup_cosine
from utils.training.towers import freeze, image_tower, kept_frozen

if TYPE_CHECKING:
    from utils.data.splits import LoadedDataset
    from utils.models.loading import ModelBundle

HEAD_LR = Setting("head_lr", 1e-3, "the linear head's learning rate (--lr: the image encoder's)", "toolkit",
                  type=positive_float)  # fmt: skip


class ImageClassifier(torch.nn.Module):
    """logits = head(normalise(image_tower(x))); the head starts from the zero-shot text head when there is one."""

    def __init__(self, model: torch.nn.Module, classes: int, dim: int, text_head: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.head = torch.nn.Linear(dim, classes)
        with torch.no_grad():
            scale = zero_shot_logit_scale(model)  # 100 for CLIP, a SigLIP model's own
            self.head.weight.copy_(scale * text_head if text_head is not None else torch.zeros(classes, dim))
            self.head.bias.zero_()  # a SigLIP bias is the same for every class: the softmax does not see it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.model.encode_image(images).float(), dim=-1))


@dataclass
class FinetuneConfig:
    epochs: int = EPOCHS.default
    lr: float = LR.default  # image encoder
    head_lr: float = HEAD_LR.default
    weight_decay: float = WEIGHT_DECAY.default
    warmup: float = WARMUP.default  # share of all steps
    batch_size: int = 128
    workers: int = 4
    seed: int = 0


@dataclass
class FinetuneResult:
    classifier: ImageClassifier
    losses: list[float] = field(default_factory=list)


def finetune_image_encoder(
    bundle: ModelBundle, train: LoadedDataset, config: FinetuneConfig, text_head: torch.Tensor | None = None
) -> FinetuneResult:
    """AdamW with warm-up and cosine decay on cross-entropy; the text tower is frozen and checked unchanged."""
    if not train.classnames:
        raise ValueError(f"fine-tuning needs a labelled train split; {train.name} has no class names")
    torch.manual_seed(config.seed)
    classifier = ImageClassifier(bundle.model, len(train.classnames), bundle.embed_dim, text_head).to(bundle.device)
    loader = make_loader(train.dataset, bundle.train_preprocess or bundle.preprocess, config.batch_size, config.workers,
                         pin_memory=bundle.device.type == "cuda", shuffle=True, seed=config.seed)  # fmt: skip
    freeze(bundle.model, "text")
    optimizer = torch.optim.AdamW(
        [
            {"params": list(image_tower(bundle.model).parameters()), "lr": config.lr},
            {"params": list(classifier.head.parameters()), "lr": config.head_lr, "weight_decay": 0.0},
        ],
        weight_decay=config.weight_decay,
    )
    total = config.epochs * len(loader)
    scheduler = warmup_cosine(optimizer, total, int(config.warmup * total))
    scaler = grad_scaler(bundle.device)

    def step(batch, index: int) -> torch.Tensor:
        logits = classifier(batch.images.to(bundle.device, non_blocking=True))
        return F.cross_entropy(logits.float(), batch.labels.to(bundle.device))

    result = FinetuneResult(classifier)
    classifier.train()
    with kept_frozen(bundle.model, "text"):
        for epoch in range(config.epochs):
            stats = run_epoch(step, loader, optimizer, scheduler, scaler, bundle.device,
                              f"fine-tune {epoch + 1}/{config.epochs}")  # fmt: skip
            result.losses.append(stats.loss)
    classifier.eval()
    freeze(bundle.model, "none")
    return result


@torch.no_grad()
def predict(classifier: ImageClassifier, data: LoadedDataset, bundle: ModelBundle, batch_size: int, workers: int):
    """(logits, labels) of every readable test image, through the (fine-tuned) network."""
    logits, labels = [], []
    for batch in make_loader(data.dataset, bundle.preprocess, batch_size, workers):
        if batch.images is None:
            continue
        with autocast(bundle.device):
            out = classifier(batch.images.to(bundle.device))
        logits.append(out.float().cpu().numpy())
        labels.append(batch.labels.numpy())
    return np.concatenate(logits), np.concatenate(labels)

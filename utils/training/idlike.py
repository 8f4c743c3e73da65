"""ID-Like (Bai et al., CVPR 2024): outliers cut from the ID images themselves, and prompts learned against them.

As the release (ycfate/ID-like code at 9acb908, kept in the fork Beauty-Wu/ID-like: utils/id_like.py get_in_out and
get_prompts, utils/id_like_loss.py, utils/dataloaders_utils.py RandomCrop, config.py), per ID image and step:
256 crops (RandomResizedCrop(224), scale 0.08-1, bilinear; horizontal flip) are encoded by the frozen CLIP; the 32
most similar to "a photo of a {class}." are ID, the 32 least similar are ID-like outliers. Prompts: one shared ID
context of 16 vectors before each class name (CoOp's, N(0, 0.02²)), and 100 OOD prompts of one shared 16-vector
context plus a learned class vector each, all "... ." ; logits 100 · cos over all C + 100 prompts. Loss:
CE(ID crops, class) + 0.3 · mean log(Σ_ID softmax(outlier crops) + 1e-16) + 0.2 · mean over prompt pairs of
max(0, cos(t_p, t_q)) (cosine_embedding_loss, target −1). AdamW lr 5e-3 (weight decay 0.01), one image per step,
3 epochs, no schedule, fp32.

The crops are drawn in the data loader, seeded by (seed, epoch) as every method's augmentation (so a resumed run
draws the same); they differ every epoch, so they are not cached. Each crop is encoded once, its features serving
the choice and the loss, as in the release.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.features.text import encode_texts
from utils.models.checkpoint import LearnedPrompts
from utils.models.logits import model_logits
from utils.models.prompt_context import ContextBatch, token_embedding
from utils.settings import Setting, non_negative_float, positive_int
from utils.training.prompt_learning import CTX_INIT, N_CTX, CoOpObjective, augmented

if TYPE_CHECKING:
    from utils.models.checkpoint import ScoreContract

RELEASE = "ID-Like's argparse defaults (ycfate/ID-like 9acb908 eval_ood_detection.py, config.py)"
CROPS = Setting("idlike_crops", 256, "ID-Like's random crops per ID image", f"{RELEASE}: --n_crop 256",
                type=positive_int)  # fmt: skip
SELECTED = Setting(
    "idlike_selected", 32, "crops most like the image's class prompt taken as ID, and least like it as outliers",
    f"{RELEASE}: --n_selection 32", type=positive_int,
)  # fmt: skip
OOD_PROMPTS = Setting("idlike_ood_prompts", 100, "ID-Like's learned OOD prompts", f"{RELEASE}: --n_ex_prompts 100",
                      type=positive_int)  # fmt: skip
OOD_CTX = Setting("idlike_ood_ctx", 16, "context vectors the OOD prompts share (each adds its own class vector)",
                  f"{RELEASE}: n_ex_ctx 16", type=positive_int)  # fmt: skip
OUT_WEIGHT = Setting("idlike_out_weight", 0.3, "weight of mean log(ID mass on the outlier crops)",
                     f"{RELEASE}: --lam_out 0.3", type=non_negative_float)  # fmt: skip
DIFF_WEIGHT = Setting("idlike_diff_weight", 0.2, "weight of the OOD prompts' mean pairwise max(0, cos)",
                      f"{RELEASE}: --lam_diff 0.2", type=non_negative_float)  # fmt: skip
SELECTION_PROMPT = "a photo of a {}."  # get_in_out: [lambda c: f'a photo of a {c}.']


class MultiCrop:
    """`count` random crops of one image, [count, 3, size, size]: the release's RandomCrop transform
    (RandomResizedCrop(size) with torchvision's defaults: scale 0.08-1, ratio 3/4-4/3, bilinear; a flip)."""

    def __init__(self, count: int, size: int, preprocess: Any):
        from torchvision import transforms

        self.count = count
        self.crop = augmented(preprocess, transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip())

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.crop(image) for _ in range(self.count)])


def split_crops(features: torch.Tensor, selection: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` crops [n, D] most similar to the class prompt `selection` [D] (ID) and the `count` least (OOD)."""
    similarity = features @ selection
    return features[similarity.topk(count).indices], features[(-similarity).topk(count).indices]


def idlike_loss(logits_in: torch.Tensor, logits_out: torch.Tensor, ood_text: torch.Tensor, targets: torch.Tensor,
                classes: int, out_weight: float, diff_weight: float) -> torch.Tensor:  # fmt: skip
    """CE of the ID crops over all prompts + w_out · mean log(ID mass + 1e-16) of the outlier crops + w_diff · the
    mean over pairs p < q of max(0, cos(t_p, t_q)) of the OOD prompts' unit features."""
    loss_in = F.cross_entropy(logits_in, targets)
    loss_out = torch.log(F.softmax(logits_out, dim=1)[:, :classes].sum(dim=1) + 1e-16).mean()
    count = len(ood_text)
    upper = torch.triu_indices(count, count, offset=1, device=ood_text.device)
    loss_diff = (ood_text @ ood_text.T)[upper[0], upper[1]].clamp(min=0).mean() if count > 1 else ood_text.new_zeros(())
    return loss_in + out_weight * loss_out + diff_weight * loss_diff


class IDLikeObjective(CoOpObjective):
    """ID-Like (Bai et al., CVPR 2024): CoOp's ID context and 100 learned OOD prompts, trained on each ID image's
    crops, the most class-like as ID and the least as outliers."""

    settings = (N_CTX, CTX_INIT, CROPS, SELECTED, OOD_PROMPTS, OOD_CTX, OUT_WEIGHT, DIFF_WEIGHT)
    provides = ("idlike_ood_features",)
    drop_last = False
    mixed_precision = False  # the release trains in fp32
    defaults: ClassVar[dict[str, Any]] = {"epochs": 3, "lr": 5e-3, "weight_decay": 0.01, "batch_size": 1,
                                          "optimizer": "adamw", "schedule": "constant"}  # fmt: skip
    defaults_source = (f"{RELEASE}: AdamW lr 5e-3 (PyTorch's weight decay 0.01), batch 1, 3 epochs, no "
                       "scheduler")  # fmt: skip

    def __init__(self, *args: Any, idlike_crops: int = CROPS.default, idlike_selected: int = SELECTED.default,
                 idlike_ood_prompts: int = OOD_PROMPTS.default, idlike_ood_ctx: int = OOD_CTX.default,
                 idlike_out_weight: float = OUT_WEIGHT.default, idlike_diff_weight: float = DIFF_WEIGHT.default,
                 seed: int = 0, **kwargs: Any):  # fmt: skip
        super().__init__(*args, seed=seed, **kwargs)
        if 2 * idlike_selected > idlike_crops:
            raise UserError(f"--idlike-selected {idlike_selected} ID and as many outlier crops need at least "
                            f"{2 * idlike_selected} crops, --idlike-crops gives {idlike_crops}")  # fmt: skip
        width = token_embedding(self.model).embedding_dim
        generator = torch.Generator().manual_seed(seed + 1)
        self.ood_context = torch.nn.Parameter((torch.randn(idlike_ood_ctx, width, generator=generator) * 0.02).to(
            self.bundle.device))  # fmt: skip
        self.ood_tokens = torch.nn.Parameter((torch.randn(idlike_ood_prompts, 1, width, generator=generator) * 0.02
                                              ).to(self.bundle.device))  # fmt: skip
        self.crops, self.selected = idlike_crops, idlike_selected
        self.weights = (idlike_out_weight, idlike_diff_weight)
        self._selection: torch.Tensor | None = None

    def check(self, config: Any) -> None:
        if config.augment != "method":
            raise UserError("ID-Like trains on its own random crops of each image (--augment method), not on the "
                            "model's transform")  # fmt: skip

    def trainable(self, tower: str) -> list[torch.nn.Parameter]:
        super().trainable(tower)
        return [self.context.vectors, self.ood_context, self.ood_tokens]

    def train_transform(self) -> Any:
        return MultiCrop(self.crops, self.input_size(), self.bundle.preprocess)

    def ood_vectors(self) -> torch.Tensor:
        """Each OOD prompt's vectors [P, 16 + 1, width]: the shared context, then its own class vector."""
        shared = self.ood_context.expand(len(self.ood_tokens), -1, -1)
        return torch.cat([shared, self.ood_tokens], dim=1)

    def ood_text(self) -> torch.Tensor:
        """The OOD prompts' unit features [P, D], with gradients."""
        batch = ContextBatch(self.ood_vectors(), ".")
        return encode_texts(self.bundle, [batch.prompt("")] * len(self.ood_tokens), batch)

    def selection_text(self) -> torch.Tensor:
        """The frozen class prompts "a photo of a {}." that choose the crops [C, D], computed once per process."""
        if self._selection is None:
            with torch.no_grad():
                prompts = [SELECTION_PROMPT.format(name) for name in self.classnames]
                self._selection = encode_texts(self.bundle, prompts).detach()
        return self._selection

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        if images.ndim != 5:
            raise UserError(
                f"ID-Like trains on crops [batch, crops, 3, H, W]; got images of shape {tuple(images.shape)}"
            )
        with torch.no_grad():
            crops = self.image_features(images.flatten(0, 1)).reshape(*images.shape[:2], -1)
            split = [split_crops(crops[i], self.selection_text()[labels[i]], self.selected) for i in range(len(labels))]
            inside, outside = torch.cat([s[0] for s in split]), torch.cat([s[1] for s in split])
        ood = self.ood_text()
        text = torch.cat([self.class_text(), ood])
        targets = labels.repeat_interleave(self.selected)
        logits_in, logits_out = model_logits(self.model, inside, text), model_logits(self.model, outside, text)
        return idlike_loss(logits_in, logits_out, ood, targets, len(self.classnames), *self.weights)

    def contract(self, method: str) -> ScoreContract:
        learned = {"idlike_ood_features": LearnedPrompts.of(self.ood_vectors(), ("",), ".")}
        return replace(super().contract(method), learned=learned)

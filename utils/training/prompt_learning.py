"""Prompt learning on a frozen CLIP: CoOp and LoCoOp, as objectives of the one training loop.

Only the prompt context trains; the whole CLIP model is frozen and checked unchanged at the end. Defaults are
the papers' ImageNet settings (CoOp configs vit_b16_ep50 and LoCoOp's scripts): 16 generic context tokens, class
token at the end, SGD lr 0.002 (momentum 0.9, weight decay 5e-4), batch 32, 50 epochs, one warm-up epoch at
lr 1e-5 then a per-epoch cosine, random resized crops (scale 0.08-1, bicubic) and horizontal flips.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.features.text import encode_texts
from utils.models.local_tokens import entropy_outside_top_k, global_and_patches
from utils.models.logits import model_logits
from utils.models.prompt_context import LearnedTemplate, PromptContext, initial_context
from utils.settings import Setting, non_negative_float, positive_int
from utils.training.objectives import Objective
from utils.training.towers import freeze, image_tower

if TYPE_CHECKING:
    from utils.models.checkpoint import ScoreContract

LOCOOP_TOP_K_SHARE = 0.2  # LoCoOp's K = 200 of ImageNet-1k's 1000 classes
N_CTX = Setting("n_ctx", 16, "learned context tokens", "CoOp's scripts (KaiyangZhou/CoOp: NCTX=16)", type=positive_int)
CTX_INIT = Setting(
    "ctx_init", "", "initialise the context from these words, e.g. 'a photo of a' (their count sets --n-ctx)",
    "CoOp (Zhou et al., IJCV 2022): a generic context", default_text="random, N(0, 0.02²)",
)  # fmt: skip
LOCOOP_LAMBDA = Setting(
    "locoop_lambda", 0.25, "weight of the entropy of OOD patches", "LoCoOp (Miyai et al., NeurIPS 2023): λ = 0.25",
    type=non_negative_float,
)  # fmt: skip
LOCOOP_TOP_K = Setting(
    "locoop_top_k", None, "a patch is OOD when its top-K classes miss the label", "LoCoOp (Miyai et al., NeurIPS "
    "2023): K = 200 of ImageNet's 1000 classes", type=positive_int, metavar="K",
    default_text="20% of the classes, within [1, classes - 1]",
)  # fmt: skip


def to_rgb(image: Any) -> Any:
    return image.convert("RGB")  # a module-level function: loader workers started by spawn can pickle it


def model_normalise(preprocess: Any) -> Any:
    """The Normalize step of the model's transform, for a method's own training transform."""
    from torchvision import transforms

    normalise = next((s for s in getattr(preprocess, "transforms", []) if isinstance(s, transforms.Normalize)), None)
    if normalise is None:
        raise UserError(f"the model's transform has no Normalize step to reuse for prompt learning ({preprocess})")
    return transforms.Normalize(normalise.mean, normalise.std)


def augmented(preprocess: Any, *steps: Any) -> Any:
    """A method's training transform: its random `steps` on the PIL image, then RGB, tensor and the model's
    normalisation."""
    from torchvision import transforms  # here: finetune_clip.py's --help lists the methods without torchvision

    return transforms.Compose([*steps, to_rgb, transforms.ToTensor(), model_normalise(preprocess)])


def coop_train_transform(preprocess: Any, size: int) -> Any:
    """Dassl's "random_resized_crop, random_flip, normalize" at the model's input size, with its normalisation."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return augmented(preprocess, transforms.RandomResizedCrop(size, scale=(0.08, 1.0),
                                                              interpolation=InterpolationMode.BICUBIC),
                     transforms.RandomHorizontalFlip())  # fmt: skip


class CoOpObjective(Objective):
    """CoOp (Zhou et al., IJCV 2022): cross-entropy of logit_scale · cos(image, [V]_1..[V]_M[CLASS].) over the ID
    classes; only the context vectors [V] learn."""

    frozen = "all"
    drop_last = True  # Dassl's training loader
    settings = (N_CTX, CTX_INIT)
    inputs = ("seed",)
    defaults: ClassVar[dict[str, Any]] = {"epochs": 50, "lr": 2e-3, "weight_decay": 5e-4, "batch_size": 32,
                                          "optimizer": "sgd", "schedule": "coop"}  # fmt: skip
    defaults_source = ("CoOp's configs/trainers/CoOp/vit_b16_ep50.yaml (SGD, lr 0.002, 50 epochs, batch 32, one "
                       "constant warm-up epoch at 1e-5, cosine) and Dassl's default weight decay 5e-4")  # fmt: skip

    def __init__(self, *args: Any, n_ctx: int = N_CTX.default, ctx_init: str = CTX_INIT.default, seed: int = 0,
                 suffix: str = ".", **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        vectors = initial_context(self.model, self.bundle.tokenizer, n_ctx, ctx_init, seed)
        self.context = PromptContext(vectors, suffix).to(self.bundle.device)

    @property
    def class_templates(self) -> tuple[LearnedTemplate, ...]:
        return (LearnedTemplate(self.context),)

    def trainable(self, tower: str) -> list[torch.nn.Parameter]:
        freeze(self.model, "all")
        return [self.context.vectors]

    def input_size(self) -> int:
        size = image_tower(self.model).image_size  # a pair for ViTs, an int for open_clip's ResNets
        return int(size[0] if isinstance(size, tuple | list) else size)

    def train_transform(self) -> Any:
        return coop_train_transform(self.bundle.preprocess, self.input_size())

    def train(self, mode: bool = True) -> CoOpObjective:
        """CLIP stays in eval mode (its BatchNorm statistics fixed), as in CoOp's code; only the context trains."""
        super().train(mode)
        self.model.eval()
        return self

    def class_text(self) -> torch.Tensor:
        """The ID classes' learned-prompt embeddings [C, D], with gradients to the context."""
        return encode_texts(self.bundle, [self.context.prompt(name) for name in self.classnames], self.context)

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        with torch.no_grad():
            features = self.image_features(images)
        return F.cross_entropy(model_logits(self.model, features, self.class_text()), labels)

    def contract(self, method: str) -> ScoreContract:
        vectors = self.context.vectors.detach().float().cpu().tolist()
        return replace(super().contract(method), context=tuple(tuple(row) for row in vectors))


class LoCoOpObjective(CoOpObjective):
    """LoCoOp (Miyai et al., NeurIPS 2023): CoOp's loss − λ · entropy of the patches whose top-K classes exclude the
    label (treated as OOD: their prediction is pushed to uniform). λ = 0.25; K = 200 for 1000 classes."""

    settings = (*CoOpObjective.settings, LOCOOP_LAMBDA, LOCOOP_TOP_K)

    def __init__(self, *args: Any, locoop_lambda: float = LOCOOP_LAMBDA.default,
                 locoop_top_k: int | None = LOCOOP_TOP_K.default, **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        classes = len(self.classnames)
        self.top_k = locoop_top_k or min(classes - 1, max(1, round(LOCOOP_TOP_K_SHARE * classes)))
        if not 0 < self.top_k < classes:
            raise UserError(
                f"LoCoOp's top-K must be between 1 and the class count - 1 ({classes - 1}), got {locoop_top_k}"
            )
        self.locoop_lambda = locoop_lambda

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        with torch.no_grad():
            pooled, patches = global_and_patches(image_tower(self.model), images)
            pooled, patches = F.normalize(pooled.float(), dim=-1), F.normalize(patches.float(), dim=-1)
        text = self.class_text()
        loss_id = F.cross_entropy(model_logits(self.model, pooled, text), labels)
        entropy = entropy_outside_top_k(model_logits(self.model, patches, text), labels, self.top_k)
        return loss_id - self.locoop_lambda * entropy

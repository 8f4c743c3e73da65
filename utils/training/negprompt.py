"""NegPrompt (Li et al., CVPR 2024): negative prompts learned from ID images alone, beside a learned positive prompt.

As the release (mala-lab/NegPrompt d4569a9: models/models.py NegaPromptLearner and NegaPromptCLIP, core/train_clip.py
train_nega_clip, osr_nega_prompt.py, scripts/train_test_ood.py), in one run of two stages:
1. the positive context ("a photo of a" → 4 learned vectors, then the class name, no full stop) learns by
   cross-entropy over the class prompts (CoOp's loss);
2. it is frozen, and N = 2 negative contexts start as its copies plus U(−1e-5, 1e-5) noise; each goes before every
   class name, and they learn by 1e-8 · CE(positive logits) + L_sep + 0.1 · L_dist + 0.05 · L_div, with
   L_sep the multi-label soft margin of the logits of all C·(1 + N) prompts against a target that is 1 on every
   prompt of the image's class, its negatives included; L_dist = − mean_c mean_j (1 − cos(p_c, n_cj)); and
   L_div = mean_c mean_j (‖n_cj‖ · ‖mean_j n_cj‖ − 1) (the release's product of norms, ‖n‖ = 1).
SGD without momentum, lr 0.1, batch 64, 16 shots; NegPrompt's cosine of period 100 steps, restarted for stage 2.

Differences (recorded in the help and README): the release picks stage 1's checkpoint and stage 2's epoch by test
accuracy and test AUROC; we keep the last. Its negative context is a float16 parameter; ours is float32. Its
scripts run 100 epochs per stage (a typo makes stage 2 ignore its intended 15): our default too.
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
from utils.models.prompt_context import ContextBatch
from utils.settings import Setting, non_negative_float, positive_int
from utils.training.prompt_learning import CoOpObjective, augmented

if TYPE_CHECKING:
    from utils.models.checkpoint import ScoreContract
    from utils.training.clip_finetune import TrainConfig

RELEASE = "NegPrompt's scripts/train_test_ood.py (mala-lab/NegPrompt d4569a9)"
NEG_CONTEXTS = Setting("neg_contexts", 2, "NegPrompt's negative contexts, each before every class name",
                       f"{RELEASE}: NEGA_CTX = 2", type=positive_int)  # fmt: skip
NEGPROMPT_CTX_INIT = Setting(
    "negprompt_ctx_init", "a photo of a", "the positive context's initial words (their count is its length; empty: "
    "16 random vectors)", "NegPrompt's osr_nega_prompt.py: CTX_INIT 'a photo of a'",
)  # fmt: skip
POSITIVE_EPOCHS = Setting(
    "positive_epochs", 100, "NegPrompt's stage 1: epochs that learn the positive context; the rest of --epochs learn "
    "the negatives", f"{RELEASE}: --max-epoch 100 for each stage", type=positive_int,
)  # fmt: skip
SEPARATION = Setting("negprompt_separation", 1.0, "weight of the multi-label soft margin (image vs all prompts)",
                     f"{RELEASE}: negative_weight 1", type=non_negative_float)  # fmt: skip
DISTANCE = Setting("negprompt_distance", 0.1, "weight of − mean (1 − cos(positive, its negatives))",
                   f"{RELEASE}: distance_weight 0.1", type=non_negative_float)  # fmt: skip
DIVERSITY = Setting("negprompt_diversity", 0.05, "weight of mean (‖mean of a class's negatives‖ − 1)",
                    f"{RELEASE}: nega_nega_weight 0.05", type=non_negative_float)  # fmt: skip
NOISE = 1e-5  # update_ctx_positive: Uniform(-1e-5, 1e-5)
POSITIVE_CE = 1e-8  # stage 2 keeps the positive cross-entropy, times 1e-8 (no gradient reaches the frozen context)
RANDOM_CONTEXT = 16  # N_CTX when no initial words are given


def negprompt_loss(logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor,
                   separation: float, distance: float, diversity: float) -> torch.Tensor:  # fmt: skip
    """Stage 2's loss from the logits [B, C, 1 + N] (positive prompt first), the unit text features of the positive
    [C, D] and negative [C, N, D] prompts, and the labels."""
    batch = len(logits)
    target = torch.zeros_like(logits)
    target[torch.arange(batch, device=labels.device), labels] = 1
    margin = F.multilabel_soft_margin_loss(logits.reshape(batch, -1), target.reshape(batch, -1))
    cosine = (negative * positive[:, None]).sum(dim=-1)  # [C, N]
    to_positive = -(1 - cosine).mean(dim=1).mean()
    spread = negative.norm(dim=-1) * negative.mean(dim=1).norm(dim=-1, keepdim=True)  # [C, N]
    among = (-(1 - spread).mean(dim=1)).mean()
    first = POSITIVE_CE * F.cross_entropy(logits[:, :, 0], labels)
    return first + separation * margin + distance * to_positive + diversity * among


def negprompt_train_transform(preprocess: Any, size: int) -> Any:
    """NegPrompt's ImageNet training images (datasets/osr_dataloader.py ImageNet_OOD): Resize(size) (bilinear),
    RandomCrop(size, padding=4), RandomHorizontalFlip, with the model's normalisation."""
    from torchvision import transforms

    return augmented(preprocess, transforms.Resize(size), transforms.RandomCrop(size, padding=4),
                     transforms.RandomHorizontalFlip())  # fmt: skip


class NegPromptObjective(CoOpObjective):
    """NegPrompt (Li et al., CVPR 2024): stage 1 CoOp on "[V]_1..[V]_4 name"; stage 2 N negative contexts per class
    name, pushed off every ID image's class and apart from the positive prompt and from each other."""

    settings = (NEGPROMPT_CTX_INIT, NEG_CONTEXTS, POSITIVE_EPOCHS, SEPARATION, DISTANCE, DIVERSITY)
    provides = ("negative_prompt_features",)
    drop_last = False
    unused_parameters = True  # the negatives in stage 1, the positive context in stage 2
    mixed_precision = False  # the release trains in fp32 (its negative context is a float16 parameter, ours fp32)
    defaults: ClassVar[dict[str, Any]] = {"epochs": 200, "lr": 0.1, "weight_decay": 0.0, "batch_size": 64,
                                          "optimizer": "plain_sgd", "schedule": "negprompt"}  # fmt: skip
    defaults_source = (f"{RELEASE} and osr_nega_prompt.py: SGD lr 0.1 without momentum or weight decay, batch 64, "
                       "CosineAnnealingLR(50) stepped per batch and per epoch, 100 epochs per stage")  # fmt: skip

    def __init__(self, *args: Any, negprompt_ctx_init: str = NEGPROMPT_CTX_INIT.default,
                 neg_contexts: int = NEG_CONTEXTS.default, positive_epochs: int = POSITIVE_EPOCHS.default,
                 negprompt_separation: float = SEPARATION.default, negprompt_distance: float = DISTANCE.default,
                 negprompt_diversity: float = DIVERSITY.default, seed: int = 0, **kwargs: Any):  # fmt: skip
        super().__init__(*args, n_ctx=RANDOM_CONTEXT, ctx_init=negprompt_ctx_init, seed=seed, suffix="", **kwargs)
        vectors = self.context.vectors.detach()
        self.negatives = torch.nn.Parameter(vectors.repeat(neg_contexts, 1, 1))
        self.register_buffer("negatives_started", torch.tensor(False))  # in last.pt: stage 2 resumes as it was
        self.positive_epochs, self.seed = positive_epochs, seed
        self.weights = (negprompt_separation, negprompt_distance, negprompt_diversity)
        self._positive: torch.Tensor | None = None

    def check(self, config: TrainConfig) -> None:
        if config.epochs <= self.positive_epochs:
            raise UserError(f"--epochs {config.epochs} leaves NegPrompt's negatives no epoch after its "
                            f"--positive-epochs {self.positive_epochs}")  # fmt: skip

    def restart_epoch(self) -> int:
        return self.positive_epochs

    def trainable(self, tower: str) -> list[torch.nn.Parameter]:
        super().trainable(tower)
        return [self.context.vectors, self.negatives]  # each gets a gradient in its own stage only

    def train_transform(self) -> Any:
        return negprompt_train_transform(self.bundle.preprocess, self.input_size())

    def start_negatives(self) -> None:
        """Stage 2 begins: the negatives become copies of the learned positive context plus U(−1e-5, 1e-5) noise
        (seeded), and the positive prompts' features are fixed."""
        if bool(self.negatives_started):
            return
        generator = torch.Generator().manual_seed(self.seed)
        copies = self.context.vectors.detach().cpu().repeat(len(self.negatives), 1, 1)
        noise = (torch.rand(copies.shape, generator=generator) * 2 - 1) * NOISE
        with torch.no_grad():
            self.negatives.copy_((copies + noise).to(self.negatives.device))
        self.negatives_started.fill_(True)

    def positive_text(self) -> torch.Tensor:
        """The frozen positive prompts' unit features [C, D], computed once per process."""
        if self._positive is None:
            with torch.no_grad():
                self._positive = self.class_text().detach()
        return self._positive

    def negative_text(self) -> torch.Tensor:
        """The negative prompts' unit features [C, N, D], with gradients to the negative contexts."""
        count, classes = len(self.negatives), len(self.classnames)
        batch = ContextBatch(self.negatives[:, None].expand(-1, classes, -1, -1).flatten(0, 1), self.context.suffix)
        encoded = encode_texts(
            self.bundle, [batch.prompt(name) for _ in range(count) for name in self.classnames], batch
        )
        return encoded.reshape(count, classes, -1).transpose(0, 1)

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        with torch.no_grad():
            features = self.image_features(images)
        if step_seed[1] < self.positive_epochs:  # stage 1: the release's loss_positive, CE over the positive logits
            return F.cross_entropy(model_logits(self.model, features, self.class_text()), labels)
        self.start_negatives()
        positive, negative = self.positive_text(), self.negative_text()
        text = torch.cat([positive[:, None], negative], dim=1)  # [C, 1 + N, D], the release's class-major layout
        logits = model_logits(self.model, features, text.flatten(0, 1)).reshape(len(features), *text.shape[:2])
        return negprompt_loss(logits, positive, negative, labels, *self.weights)

    def contract(self, method: str) -> ScoreContract:
        if not bool(self.negatives_started):
            raise UserError("NegPrompt's negatives were never trained (stage 2 did not start)")
        learned = {"negative_prompt_features": LearnedPrompts.of(self.negatives, None, self.context.suffix)}
        return replace(super().contract(method), context_suffix=self.context.suffix, learned=learned)

"""SeTAR (Li et al., NeurIPS 2024): training-free low-rank approximation of CLIP's MLP up-projections, chosen greedily.

As the release (X1AOX1A/SeTAR 1564daa, searchers.py VisualTextSearch, model_hub.py, peft modified_lora svd_init with
lora_weights="small", then unload()): each block's W_up (open_clip's mlp.c_fc) is replaced by U_k diag(S_k) V_kᵀ, its
k = full − round(full · ratio) largest singular directions, the bias kept; ratio 0 leaves the matrix bit-exact. The
search visits the vision blocks last to first, then the text blocks last to first; at each it tries every ratio of
the grid on the ID search images and keeps one only if it lowers the single running best loss (strictly). Every
SVD is of the pretrained matrix, in float32. The loss is LoCoOp's on logit_scale-scaled cosines: cross-entropy of
the global logits + λ · (− mean entropy of the patches whose top-K classes miss the label), the entropy pooled over
a batch's patches and the batches weighted by their size.

Exact shortcuts, no change to any number: the text prompts are encoded once for the vision steps and the image
features once for the text steps (the other tower is fixed meanwhile), and ratio 0 after the first step is the
current model, whose loss is the running best, so it is never accepted and not recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.errors import UserError
from utils.models.local_tokens import entropy_outside_top_k, global_and_patches
from utils.models.logits import model_logits

if TYPE_CHECKING:
    from utils.models.loading import ModelBundle

TOP_K_SHARE = 0.3  # SeTAR's K = 300 of ImageNet-1k's 1000 classes
PROMPTS_PER_FORWARD = 1000


def up_projections(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Each transformer block's MLP up-projection, in SeTAR's search order: `visual.L` from the last vision block to
    the first, then `text.L` likewise."""
    towers = {"visual": getattr(getattr(model, "visual", None), "transformer", None),
              "text": getattr(getattr(model, "text", model), "transformer", None)}  # fmt: skip
    found: dict[str, torch.nn.Linear] = {}
    for tower, transformer in towers.items():
        blocks = list(getattr(transformer, "resblocks", []))
        layers = [getattr(getattr(block, "mlp", None), "c_fc", None) for block in blocks]
        if not blocks or not all(isinstance(layer, torch.nn.Linear) for layer in layers):
            raise UserError(f"SeTAR needs open_clip transformer towers (blocks with mlp.c_fc); this model's {tower} "
                            f"tower has none")  # fmt: skip
        found.update({f"{tower}.{k}": layers[k] for k in range(len(layers) - 1, -1, -1)})
    return found


def full_rank(layer: torch.nn.Linear) -> int:
    return min(layer.weight.shape)


def kept_rank(full: int, ratio: float) -> int:
    """Singular directions kept: the release drops round(full · ratio) (Python's round, half to even)."""
    return full - round(full * ratio)


class LowRank:
    """One pretrained matrix and its approximations (its SVD taken once, in float32, when first needed)."""

    def __init__(self, layer: torch.nn.Linear):
        self.layer, self.original = layer, layer.weight.detach().clone()
        self._svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def weight(self, ratio: float) -> torch.Tensor:
        """U_k diag(S_k) V_kᵀ (the release's torch.mm(u0, torch.mm(torch.diag(s0), v0.t()))); ratio 0: the original."""
        if ratio == 0:
            return self.original
        if self._svd is None:
            self._svd = torch.linalg.svd(self.original.float(), full_matrices=False)
        u, s, vh = self._svd
        k = kept_rank(full_rank(self.layer), ratio)
        if k < 1:
            raise UserError(f"SeTAR ratio {ratio} keeps no singular direction of a rank-{full_rank(self.layer)} matrix")
        return torch.mm(u[:, :k], torch.mm(torch.diag(s[:k]), vh[:k])).to(self.original.dtype)

    @torch.no_grad()
    def set(self, ratio: float) -> None:
        self.layer.weight.copy_(self.weight(ratio))


def search_loss(global_logits: torch.Tensor, local_logits: torch.Tensor, labels: torch.Tensor, lam: float,
                top_k: int) -> torch.Tensor:  # fmt: skip
    """One batch's LoCoOp loss as SeTAR computes it: CE(global) − λ · entropy of the OOD patches (top K by logits)."""
    ood = entropy_outside_top_k(local_logits, labels, top_k, rank_by="logits")
    return F.cross_entropy(global_logits, labels) - lam * ood


@dataclass
class Step:
    """One candidate of the search: its matrix, ratio, loss (None: ratio 0 after the first step, never better) and
    whether it became the running best when tried (the matrix keeps the last of its candidates that did)."""

    matrix: str
    ratio: float
    loss: float | None
    new_best: bool


@dataclass
class Search:
    """What the search chose: ratio per matrix (those above 0), the loss before and after, every candidate tried."""

    ratios: dict[str, float]
    kept: dict[str, int]
    base_loss: float
    loss: float
    steps: list[Step] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "kept_rank": self.kept, "loss_before": self.base_loss, "loss_after": self.loss,
                "steps": [vars(step) for step in self.steps]}  # fmt: skip


def top_k_for(classes: int, top_k: int | None) -> int:
    """The release's K (300 of 1000 classes) as a share where not given; within [1, classes − 1]."""
    k = top_k or min(classes - 1, max(1, round(TOP_K_SHARE * classes)))
    if not 0 < k < classes:
        raise UserError(f"--setar-top-k must be between 1 and the class count - 1 ({classes - 1}), got {top_k}")
    return k


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """The grid in its order, 0 first: the release's greedy rule starts from the unmodified model."""
    ratios = list(dict.fromkeys(float(r) for r in ratios))
    if not ratios or ratios[0] != 0 or any(not 0 <= r < 1 for r in ratios):
        raise UserError(f"--setar-ratios takes shares in [0, 1) starting with 0 (the unmodified matrix, which the "
                        f"search compares against), got {' '.join(map(str, ratios))}")  # fmt: skip
    return ratios


def check_keeps_some(model: torch.nn.Module, ratios: Sequence[float]) -> None:
    """Every matrix keeps at least one singular direction under the largest ratio (refused before the search)."""
    for name, layer in up_projections(model).items():
        if kept_rank(full_rank(layer), max(ratios)) < 1:
            raise UserError(f"--setar-ratios {max(ratios)} keeps no singular direction of {name} (rank "
                            f"{full_rank(layer)})")  # fmt: skip


class _Features:
    """The search images' normalised global and patch features under the current vision weights, per batch."""

    def __init__(self, bundle: ModelBundle, images: torch.Tensor, batch: int):
        self.bundle, self.images, self.batch = bundle, images, batch

    @torch.no_grad()
    def __iter__(self):
        visual = self.bundle.model.visual
        for start in range(0, len(self.images), self.batch):
            pooled, patches = global_and_patches(visual, self.images[start : start + self.batch].to(self.bundle.device))
            yield start, F.normalize(pooled.float(), dim=-1), F.normalize(patches.float(), dim=-1)


@torch.no_grad()
def class_text(bundle: ModelBundle, prompts: Sequence[str]) -> torch.Tensor:
    """The class prompts' normalised float32 embeddings under the current text weights."""
    parts = [bundle.model.encode_text(bundle.tokenizer(list(prompts[i : i + PROMPTS_PER_FORWARD])).to(bundle.device))
             for i in range(0, len(prompts), PROMPTS_PER_FORWARD)]  # fmt: skip
    return F.normalize(torch.cat(parts).float(), dim=-1)


@torch.no_grad()
def loss_of(bundle: ModelBundle, batches: Any, text: torch.Tensor, labels: torch.Tensor, lam: float,
            top_k: int) -> float:  # fmt: skip
    """The batch-size-weighted mean of the batches' losses (the release repeats each batch's loss per image)."""
    total, count = 0.0, 0
    for start, pooled, patches in batches:
        target = labels[start : start + len(pooled)].to(bundle.device)
        loss = search_loss(model_logits(bundle.model, pooled, text), model_logits(bundle.model, patches, text),
                           target, lam, top_k)  # fmt: skip
        total, count = total + float(loss) * len(pooled), count + len(pooled)
    return total / count


def search(bundle: ModelBundle, images: torch.Tensor, labels: torch.Tensor, prompts: Sequence[str], lam: float,
           top_k: int, ratios: Sequence[float], batch: int, progress: bool = True) -> Search:  # fmt: skip
    """SeTAR's greedy search on `images` (preprocessed, [N, 3, H, W]) with `labels` into `prompts` (one per class);
    leaves the model with the chosen ratios applied."""
    ratios, matrices = (
        check_ratios(ratios),
        {name: LowRank(layer) for name, layer in up_projections(bundle.model).items()},
    )
    best, chosen, steps, base = math.inf, {}, [], None
    features: Any = _Features(bundle, images, batch)
    text = class_text(bundle, prompts)
    bar = tqdm(total=len(matrices) * len(ratios), desc="SeTAR search", unit="try", disable=not progress)
    for position, (name, matrix) in enumerate(matrices.items()):
        if name.startswith("text") and isinstance(features, _Features):  # the vision weights are final now
            features = list(features)
        accepted, kept_text = 0.0, text  # the text features under the matrix's accepted ratio
        for ratio in ratios:
            bar.update()
            if ratio == 0 and position > 0:
                steps.append(Step(name, ratio, None, False))
                continue
            matrix.set(ratio)
            if name.startswith("text"):
                text = class_text(bundle, prompts)
            loss = loss_of(bundle, features, text, labels, lam, top_k)
            base = loss if base is None else base
            steps.append(Step(name, ratio, loss, loss < best))
            if loss < best:
                best, accepted, kept_text = loss, ratio, text
        matrix.set(accepted)
        text = kept_text
        if accepted:
            chosen[name] = accepted
    bar.close()
    kept = {name: kept_rank(full_rank(matrices[name].layer), ratio) for name, ratio in chosen.items()}
    return Search(chosen, kept, float(base), float(best), steps)


def apply_ratios(model: torch.nn.Module, ratios: dict[str, float]) -> None:
    """Put a search's result (matrix -> ratio) into a freshly loaded model."""
    matrices = up_projections(model)
    if unknown := sorted(set(ratios) - set(matrices)):
        raise UserError(f"SeTAR ratios name matrices this model does not have: {', '.join(unknown)}")
    for name, ratio in ratios.items():
        LowRank(matrices[name]).set(ratio)

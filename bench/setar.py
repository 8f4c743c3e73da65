"""SeTAR's greedy search: ours against the release's way of computing it, on the same images and model.

The release (X1AOX1A/SeTAR searchers.py, model_hub.py) evaluates every candidate on a fresh copy of the pretrained
model with every accepted ratio re-applied (torch.svd's "small" split), encoding both towers in full, ratio 0 at
every step. Ours takes each matrix's SVD once, encodes the text prompts once for the vision steps and the images
once for the text steps, and skips ratio 0 after the first step (it is the current model).

python -m bench.setar           # open_clip ViT-B-32 (random weights), 16 images of 8 classes, 3 ratios (~8 min)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import median_seconds, parser, report
from utils.models import setar
from utils.models.loading import ModelBundle, load_model
from utils.models.local_tokens import global_and_patches

SIZES = {"full": ("ViT-B-32", 16, 8, [0.0, 0.2, 0.4]), "smoke": ("tiny", 10, 5, [0.0, 0.2, 0.4])}


def release_apply(model: torch.nn.Module, settings: Sequence[tuple[str, float]]) -> None:
    """peft modified_lora svd_init(lora_weights="small") then unload(): W = U_k diag(S_k) V_kᵀ, ratio 0 skipped."""
    for name, ratio in settings:
        layer = setar.up_projections(model)[name]
        rank = round(min(layer.weight.shape) * ratio)
        if rank == 0:
            continue
        u, s, v = torch.svd(layer.weight.detach())
        idx = s.size(0) - rank
        with torch.no_grad():
            layer.weight.copy_(torch.mm(u[:, :idx], torch.mm(torch.diag(s[:idx]), v[:, :idx].t())))


@torch.no_grad()
def release_loss(bundle: ModelBundle, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 prompts: Sequence[str], lam: float, top_k: int, batch: int) -> float:  # fmt: skip
    """model_hub.py compute_metrics_loss: both towers encoded, CE + λ · loss_ood per batch, repeated per image."""
    text = F.normalize(model.encode_text(bundle.tokenizer(list(prompts))).float(), dim=-1)
    losses: list[float] = []
    for start in range(0, len(images), batch):
        x, y = images[start : start + batch], labels[start : start + batch]
        g = F.normalize(model.encode_image(x).float(), dim=-1)
        p = F.normalize(global_and_patches(model.visual, x)[1].float(), dim=-1)  # GL-MCM's value-path patches
        scale = model.logit_scale.exp()
        logits_global, logits_local = scale * g @ text.T, scale * p @ text.T
        is_ood = ~torch.topk(logits_local, k=top_k, dim=2).indices.eq(y[:, None, None]).any(dim=2)
        probs = F.softmax(logits_local, dim=-1)[is_ood]
        entropy = -torch.mean(torch.sum(probs * torch.log(probs + 1e-5), 1)) if len(probs) else torch.zeros(())
        losses += [float(F.cross_entropy(logits_global, y) - lam * entropy)] * len(x)
    return float(np.mean(losses))


def release_search(bundle: ModelBundle, images: torch.Tensor, labels: torch.Tensor, prompts: Sequence[str],
                   lam: float, top_k: int, ratios: Sequence[float], batch: int,
                   ) -> tuple[dict, float, list]:  # fmt: skip
    """searchers.py VisualTextSearch: (chosen ratios, best loss, [(matrix, ratio, loss)] for every candidate)."""
    settings: list[tuple[str, float]] = []
    best, trace = float("inf"), []
    for name in setar.up_projections(bundle.model):
        best_setting = (name, 0.0)
        for ratio in ratios:
            model = copy.deepcopy(bundle.model)
            release_apply(model, [*settings, (name, ratio)])
            loss = release_loss(bundle, model, images, labels, prompts, lam, top_k, batch)
            trace.append((name, ratio, loss))
            if loss < best:
                best, best_setting = loss, (name, ratio)
        settings.append(best_setting)
    return {name: ratio for name, ratio in settings if ratio}, best, trace


def main(argv: Sequence[str] | None = None) -> str:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    model_name, count, classes, ratios = SIZES["smoke" if args.smoke else "full"]
    repeats = 1 if args.smoke else args.repeats
    generator = torch.Generator().manual_seed(0)
    original = load_model(model_name, "none", device=args.device, seed=0)
    size = original.model.visual.image_size
    images = torch.randn(count, 3, *(size if isinstance(size, tuple | list) else (size, size)), generator=generator)
    labels = torch.arange(count) % classes
    prompts = [f"a photo of a class {k}" for k in range(classes)]
    top_k, batch, lam = setar.top_k_for(classes, None), 16, 0.1

    def ours() -> setar.Search:
        bundle = copy.deepcopy(original)
        return setar.search(bundle, images.to(bundle.device), labels, prompts, lam, top_k, ratios, batch, False)

    ours_seconds, found = median_seconds(ours, repeats)
    release_seconds, (chosen, best, trace) = median_seconds(
        lambda: release_search(original, images, labels, prompts, lam, top_k, ratios, batch), 1
    )
    release = {(name, ratio): loss for name, ratio, loss in trace}
    gap = max(abs(step.loss - release[step.matrix, step.ratio]) for step in found.steps if step.loss is not None)
    matrices = len(setar.up_projections(original.model))
    rows = [["release's way (fresh model per candidate)", 1, release_seconds, 1.0, "reference"],
            ["ours", repeats, ours_seconds, release_seconds / ours_seconds, found.ratios == chosen]]  # fmt: skip
    notes = [f"{model_name} (random weights), {count} images of {classes} classes, batches of {batch}, "
             f"{matrices} matrices x {len(ratios)} ratios, on {args.device}.",
             f"Largest difference of a candidate's loss: {gap:.1e}; best loss {found.loss:.6f} vs "
             f"{best:.6f}."]  # fmt: skip
    return report("SeTAR search", ["method", "repeats", "seconds", "speed-up", "same ratios"], rows, notes)


if __name__ == "__main__":
    main()

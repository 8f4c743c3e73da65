"""CLIP's global embedding and its projected patch tokens in one forward pass, as GL-MCM reads them.

GL-MCM (Miyai et al., 2023; AtsuMiyai/GL-MCM clip/model.py): the last block's attention is replaced by its value
path alone (v = out_proj(W_v · ln_1(x) + b_v) per token, no mixing), keeping the block's residual and MLP; then
ln_post and the projection on every token, the class token dropped. The global embedding is the unchanged one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.errors import UserError


def _check(visual: torch.nn.Module) -> None:
    from open_clip.transformer import VisionTransformer

    last = getattr(getattr(visual, "transformer", None), "resblocks", [None])[-1]
    plain = isinstance(visual, VisionTransformer) and visual.attn_pool is None and not visual.final_ln_after_pool
    if (
        not plain
        or visual.pool_type != "tok"
        or not isinstance(getattr(last, "attn", None), torch.nn.MultiheadAttention)
    ):
        raise UserError(f"patch-level features (the `local` view of l_mcm, gl_mcm) need an open_clip ViT image "
                        f"tower with class-token pooling; this model's is {type(visual).__name__}")  # fmt: skip


def patch_count(visual: torch.nn.Module) -> int:
    _check(visual)
    return int(visual.grid_size[0] * visual.grid_size[1])


def global_and_patches(visual: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, D] global embeddings (= encode_image) and [B, P, D] projected patch tokens (value path of the last block)."""
    _check(visual)
    x = visual._embeds(images)
    transformer = visual.transformer
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    last = transformer.resblocks[-1]
    full = last(x)
    attn, width = last.attn, x.shape[-1]
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    values = attn.out_proj(F.linear(last.ln_1(x), attn.in_proj_weight[2 * width :], bias))
    local = x + last.ls_1(values)
    local = local + last.ls_2(last.mlp(last.ln_2(local)))
    if not transformer.batch_first:
        full, local = full.transpose(0, 1), local.transpose(0, 1)
    pooled, _ = visual._pool(full)
    patches = visual.ln_post(local[:, 1:])
    if visual.proj is not None:
        pooled, patches = pooled @ visual.proj, patches @ visual.proj
    return pooled, patches


def entropy_outside_top_k(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int,
                          rank_by: str = "probs") -> torch.Tensor:  # fmt: skip
    """LoCoOp's OOD regions: patches whose top-K classes miss the image's label; the mean entropy of their class
    distribution (p log(p + 1e-5), as the official entropy_select_topk), 0 when there are none. `rank_by`: the top K
    of the probabilities (LoCoOp's code) or of the logits (SeTAR's); they differ only where a softmax ties."""
    batch, patches, classes = local_logits.shape
    flat = local_logits.reshape(batch * patches, classes)
    probs = F.softmax(flat, dim=-1)
    top = (probs if rank_by == "probs" else flat).topk(top_k, dim=1).indices
    outside = ~(top == labels.repeat_interleave(patches)[:, None]).any(dim=1)
    picked = probs[outside]
    if len(picked) == 0:
        return local_logits.new_zeros(())
    return -(picked * torch.log(picked + 1e-5)).sum(dim=1).mean()

"""Logits from a model's embeddings with its own temperature and, for SigLIP-family models, its own bias.

CLIP forms logits as exp(t) · cos(image, text), t learned and capped at ln 100 in training; SigLIP (Zhai et al.,
ICCV 2023) as exp(t') · cos + b, a sigmoid per pair, with a learned bias b and no such cap. open_clip gives a SigLIP
model a `logit_bias` parameter (None for CLIP), which is how a model's family is told here.
"""

from __future__ import annotations

import torch

from utils.models import CLIP_LOGIT_SCALE


def has_logit_bias(model: torch.nn.Module) -> bool:
    """Whether `model` is of the SigLIP family (open_clip gives it a learned `logit_bias`)."""
    return getattr(model, "logit_bias", None) is not None


def logit_scale(model: torch.nn.Module) -> torch.Tensor:
    """The model's learned scale exp(t), with gradients: capped at 100 for CLIP, as in CLIP's training; a SigLIP
    model's is its own, never capped at CLIP's 100."""
    scale = model.logit_scale.exp()
    return scale if has_logit_bias(model) else scale.clamp(max=CLIP_LOGIT_SCALE)


def model_logits(model: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """The model's own logits [..., T] of L2-normalised features: logit_scale(model) · image @ textᵀ + b (b: a
    SigLIP model's bias), as open_clip's `get_logits`. A softmax over the text axis is unchanged by b (one shift
    for every class), so softmax losses train the same with or without it; a sigmoid loss needs it."""
    logits = logit_scale(model) * image_features @ text_features.T
    return logits + model.logit_bias if has_logit_bias(model) else logits


def zero_shot_logit_scale(model: torch.nn.Module) -> float:
    """The scale evaluation puts on cosine similarities before a softmax: 100 for CLIP (the papers' constant, which
    OpenAI's CLIP learned), a SigLIP model's own exp(t'). No bias: a softmax over classes does not see one."""
    return float(model.logit_scale.detach().exp()) if has_logit_bias(model) else CLIP_LOGIT_SCALE

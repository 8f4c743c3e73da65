"""The one text encoder: prompts -> L2-normalised CLIP text embeddings, for training and evaluation alike.

`encode_texts` is the forward pass (differentiable: the fine-tuning objectives train through it);
`text_embeddings` renders names through templates, averages each name's prompts and renormalises (open_clip's
zero-shot classifier), in batches, and keeps large lists (a word list) in the feature cache.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.distributed import World
from utils.errors import UserError
from utils.features.store import FeatureCache, cache_key
from utils.features.writer import entry_writer
from utils.models.checkpoint import LearnedPrompts
from utils.models.prompt_context import ContextBatch, LearnedTemplate, PromptContext, placeholder_prompt
from utils.prompts import AS_IS, Template, render

if TYPE_CHECKING:
    from utils.models.loading import ModelBundle

AVERAGES = {"unit": True, "raw": False}  # how prompts are averaged -> whether each is normalised before
PROMPTS_PER_FORWARD = 1024  # text encoder batch: large enough to amortise overhead, small enough for any GPU
NAMES_PER_ENTRY_WRITE = 4096  # names encoded between two writes into a cache entry


def encode_texts(bundle: ModelBundle, texts: Sequence[str], context: PromptContext | ContextBatch | None = None,
                 normalise: bool = True) -> torch.Tensor:  # fmt: skip
    """One L2-normalised (or, `normalise=False`, raw) float32 embedding per text [len(texts), D], on the bundle's
    device, with gradients.

    With a learned `context`, the texts are its placeholder prompts and the vectors take the placeholders' place (a
    ContextBatch: one context per text).
    """
    if not bundle.has_text:
        raise UserError(f"{bundle.name} has no text encoder")
    tokens = bundle.tokenizer(list(texts)).to(bundle.device)
    with context.inserted(bundle.model, tokens) if context is not None else contextlib.nullcontext():
        embeddings = bundle.model.encode_text(tokens).float()
    return F.normalize(embeddings, dim=-1) if normalise else embeddings


def learned_context(templates: Sequence[Template]) -> PromptContext | None:
    """The learned context when the templates are one LearnedTemplate; None for text templates."""
    learned = [t for t in templates if isinstance(t, LearnedTemplate)]
    if learned and len(templates) > 1:
        raise UserError("a learned prompt context cannot be averaged with other templates")
    return learned[0].context if learned else None


@torch.no_grad()
def _averaged(bundle: ModelBundle, names: Sequence[str], templates: Sequence[Template], average: str) -> np.ndarray:
    """Each name's prompts encoded, averaged over the templates and renormalised: [len(names), D] float32."""
    per_forward, context = max(1, PROMPTS_PER_FORWARD // len(templates)), learned_context(templates)
    blocks = []
    for start in range(0, len(names), per_forward):
        batch = names[start : start + per_forward]
        prompts = [prompt for name in batch for prompt in render(templates, name)]
        encoded = encode_texts(bundle, prompts, context, normalise=AVERAGES[average])
        mean = encoded.reshape(len(batch), len(templates), -1).mean(dim=1)
        blocks.append((mean / mean.norm(dim=1, keepdim=True)).cpu().numpy())
    return np.concatenate(blocks)


def text_embeddings(
    bundle: ModelBundle,
    names: Sequence[str],
    templates: Sequence[Template] = AS_IS,
    cache: FeatureCache | None = None,
    average: str = "unit",
) -> np.ndarray:
    """Template-averaged, L2-normalised embeddings of `names` [len(names), D] (float32).

    `templates` defaults to the names as they are (whole prompts). `average`: "unit" averages the prompts' unit
    vectors (CLIP's and open_clip's zero-shot classifiers), "raw" their raw embeddings (CSP's release); both are
    normalised after. With `cache`, the embeddings are stored in the feature cache (in its dtype) under the weights,
    names and templates, resumably: worth it for long word lists.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    if not names:
        raise UserError("the list of names to encode is empty")
    if not templates:
        raise UserError("no prompt templates to encode the names with")
    names = list(names)
    if cache is None:
        return _averaged(bundle, names, templates, average)
    key = cache_key({"model": bundle.name, "weights": bundle.fingerprint,
                     "text": hashlib.blake2b("\n".join(names).encode(), digest_size=16).hexdigest(),
                     "templates": render(templates, "{}"), "dtype": cache.dtype})  # fmt: skip
    if (context := learned_context(templates)) is not None:  # the placeholders alone do not name the prompts
        key = cache_key({"text": key, "context": context.digest()})
    if average != "unit":  # the keys of unit averages stay those of caches made before raw ones existed
        key = cache_key({"text": key, "average": average})
    entry = cache.load(key)
    if entry is None:
        spec = {"rows": len(names), "dim": bundle.embed_dim, "dtype": cache.dtype, "batch_size": NAMES_PER_ENTRY_WRITE,
                "world_size": 1}  # fmt: skip
        meta = {"model": bundle.name, "weights": bundle.weights, "text_count": len(names)}
        with (
            entry_writer(cache, key, spec, meta, World(), "the text features") as shard,
            tqdm(total=len(names), unit="name", desc="text features", dynamic_ncols=True) as bar,
        ):
            for start in range(shard.next_row if shard else len(names), len(names), NAMES_PER_ENTRY_WRITE):
                batch = names[start : start + NAMES_PER_ENTRY_WRITE]
                shard.write(np.arange(start, start + len(batch)), _averaged(bundle, batch, templates, average),
                            np.full(len(batch), -1), len(batch), [])  # fmt: skip
                bar.update(len(batch))
        entry = cache.load(key)
    return np.asarray(entry.features, dtype=np.float32)


@torch.no_grad()
def learned_prompt_features(bundle: ModelBundle, prompts: LearnedPrompts, classnames: Sequence[str]) -> np.ndarray:
    """A checkpoint's learned prompts encoded: [contexts, names, D], each context before every name (the ID class
    names where the prompts name none), L2-normalised; one context per prompt, PROMPTS_PER_FORWARD at a time."""
    names = list(classnames if prompts.names is None else prompts.names)
    contexts = prompts.tensor()
    every = contexts[:, None].expand(-1, len(names), -1, -1).flatten(0, 1)  # [contexts · names, tokens, width]
    texts = [placeholder_prompt(contexts.shape[1], name, prompts.suffix) for _ in contexts for name in names]
    blocks = [encode_texts(bundle, texts[i : i + PROMPTS_PER_FORWARD],
                           ContextBatch(every[i : i + PROMPTS_PER_FORWARD], prompts.suffix)).cpu().numpy()
              for i in range(0, len(texts), PROMPTS_PER_FORWARD)]  # fmt: skip
    return np.concatenate(blocks).reshape(len(contexts), len(names), -1)

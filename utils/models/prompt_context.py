"""CoOp's learned prompt context: vectors that replace the placeholder words of "X X ... X {name}." in the text tower.

CoOp (Zhou et al., IJCV 2022; KaiyangZhou/CoOp trainers/coop.py): the prompt is [SOS][V]_1..[V]_M[CLASS][.][EOS],
class token at the end, one generic context shared by every class. Its code tokenises "X X ... X {name}." and
swaps the M placeholder embeddings (token positions 1..M) for the learned vectors before the positional
embedding; so do we, with a hook on the token embedding, which keeps open_clip's own text forward (pooling, masks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from utils.errors import UserError

PLACEHOLDER = "X"


def token_embedding(model: torch.nn.Module) -> torch.nn.Embedding:
    """The text tower's token embedding (CLIP: model.token_embedding; CustomTextCLIP: model.text.token_embedding)."""
    for owner in (model, getattr(model, "text", None)):
        layer = getattr(owner, "token_embedding", None)
        if isinstance(layer, torch.nn.Embedding):
            return layer
    raise UserError(f"learned prompts (CoOp, LoCoOp) need an open_clip text transformer with a token embedding; "
                    f"{type(model).__name__}'s text tower has none")  # fmt: skip


def initial_context(model: torch.nn.Module, tokenizer, n_ctx: int, init: str = "", seed: int = 0) -> torch.Tensor:
    """CoOp's initialisation: N(0, 0.02²) per entry (generic context), or the embeddings of `init`'s words (whose
    count then sets the length), as trainers/coop.py does with CTX_INIT."""
    layer = token_embedding(model)
    if init:
        from open_clip.tokenizer import SimpleTokenizer

        if not isinstance(tokenizer, SimpleTokenizer):  # CoOp's rule reads [SOS] w_1 .. w_n: CLIP's tokenizer
            raise UserError(f"--ctx-init reads the words' embeddings as CoOp does, after CLIP's start token; "
                            f"this model's tokenizer is {type(tokenizer).__name__}: use --n-ctx instead")  # fmt: skip
        words, tokens = init.split(), tokenizer([init])[0]
        pieces = int((tokens != 0).sum()) - 2  # CLIP's tokenizer: start and end of text around the words
        if pieces != len(words):
            raise UserError(f"--ctx-init {init!r}: each word must be one token ({len(words)} words, {pieces} tokens)")
        with torch.no_grad():
            return layer(tokens[1 : 1 + len(words)].to(layer.weight.device)).detach().float().cpu()
    if n_ctx < 1:
        raise UserError(f"the prompt context needs at least one token, got {n_ctx}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_ctx, layer.embedding_dim, generator=generator) * 0.02


@contextmanager
def inserted_vectors(model: torch.nn.Module, tokens: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
    """Within the block, the placeholder embeddings of `tokens` are `vectors`: [M, width] for every prompt, or
    [P, M, width], one context per prompt (NegPrompt's negatives, ID-Like's OOD prompts); with their gradients."""
    layer, length = token_embedding(model), int(vectors.shape[-2])
    if vectors.ndim == 3 and len(vectors) != len(tokens):
        raise ValueError(f"{len(vectors)} contexts for {len(tokens)} prompts")
    start = _start(tokens, length)

    def swap(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        inserted = vectors.to(output.device, output.dtype)
        inserted = inserted.expand(len(output), -1, -1) if inserted.ndim == 2 else inserted
        return torch.cat([output[:, :start], inserted, output[:, start + length :]], dim=1)

    handle = layer.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()


def _start(tokens: torch.Tensor, length: int) -> int:
    """Where the placeholders begin: after a start-of-text token (CLIP's tokenizer), else at the front."""
    for start in (1, 0):
        run = tokens[:, start : start + length]
        if run.shape[1] == length and bool((run == run[0, 0]).all()):
            return start
    raise UserError(f"the tokenised prompts do not begin with the {length} context placeholders")


def placeholder_prompt(length: int, name: str, suffix: str = ".") -> str:
    """The text tokenised for a learned prompt: `length` placeholders, then the name and the suffix (CoOp's ".";
    NegPrompt's prompts end at the name)."""
    tail = f"{name}{suffix}"
    return " ".join([PLACEHOLDER] * length + ([tail] if tail else []))


class _Placeholders:
    """What a learned context shares: its length, its placeholder prompts and their insertion (`vectors`, `suffix`)."""

    vectors: torch.Tensor
    suffix: str

    @property
    def length(self) -> int:
        return int(self.vectors.shape[-2])

    def prompt(self, name: str) -> str:
        """The text tokenised for `name`: the placeholders stand where the vectors go."""
        return placeholder_prompt(self.length, name, self.suffix)

    def inserted(self, model: torch.nn.Module, tokens: torch.Tensor):
        """Within the block, the placeholder embeddings of `tokens` (as tokenised from `prompt`) are the vectors."""
        return inserted_vectors(model, tokens, self.vectors)


class PromptContext(_Placeholders, torch.nn.Module):
    """M learned context vectors [M, width] (CoOp's generic context, class token at the end), then `suffix`."""

    def __init__(self, vectors: torch.Tensor, suffix: str = "."):
        super().__init__()
        if vectors.ndim != 2 or len(vectors) == 0:
            raise UserError(f"a prompt context is [tokens, width] with tokens > 0, got shape {tuple(vectors.shape)}")
        self.vectors = torch.nn.Parameter(vectors.detach().clone().float())
        self.suffix = suffix

    def digest(self) -> str:
        """A hash of the vectors' bytes (and of a suffix other than CoOp's): caches key on it."""
        data = self.vectors.detach().float().cpu().numpy().tobytes()
        if self.suffix != ".":
            data += self.suffix.encode() + b"\0"
        return hashlib.blake2b(data, digest_size=16).hexdigest()


class ContextBatch(_Placeholders):
    """One learned context per prompt, [P, M, width], computed by a method (with gradients); encode_texts takes it
    as a PromptContext, the prompts rendered with `prompt`."""

    def __init__(self, vectors: torch.Tensor, suffix: str = "."):
        self.vectors, self.suffix = vectors, suffix


@dataclass(frozen=True, eq=False)
class LearnedTemplate:
    """A class-prompt template whose words are a learned context: the text encoder inserts `context` (see
    utils/features/text.py); rendered as text it is the placeholder prompt."""

    context: PromptContext

    def __call__(self, name: str) -> str:
        return self.context.prompt(name)

    @property
    def text(self) -> str:
        """How the template is shown and recorded."""
        return f"<{self.context.length} learned context tokens> {{}}{self.context.suffix}"

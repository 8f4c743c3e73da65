"""AdaNeg (Zhang & Zhang, NeurIPS 2024): negative proxies adapted at test time from a memory of test features.

As YBZh/OpenOOD-VLM 694592a openood/postprocessors/ttaprompt_postprocessor.py (TTAPromptPostprocessor_noadagap,
"the adopted one") with scripts/ood/adaneg/imagenet.sh. Every label, ID class or negative, has a memory slot whose
position 0 is its text embedding. The test images come as a stream in batches; for each batch:

1. S_nl = NegLabel's grouped ID mass on the static text logits (100 · cosines, 5 groups);
2. writes, one image at a time, ID-confident ones first: S_nl > γ + g(1 − γ) into the slot of the image's top ID
   class, S_nl < γ − gγ into that of its top negative; a full slot replaces its highest-entropy image when the new
   one's entropy (of the softmax over the ID, or the negative, logits) is lower than some stored one's;
3. reads: each label's proxy is its slot's normalised mean (task-adaptive), or per image the normalised sum of its
   slot weighted by exp(−β(1 − cos)) (sample-adaptive);
4. S = S_grouped(100 · cosines to the proxies) + λ · S_nl.

An image's score so depends on the images before it: a run streams ID ∪ one OOD set in a seeded random order (the
release: a DataLoader shuffle without a seed), batch by batch, the memory reset for each OOD set, and records the
order's seed (the release's order follows torch's global RNG inside its code: not reproducible outside it). The
release's memory length L stores L − 1 images (a slot counts as full at index L), and its fp16 entropy is NaN for
most images, which so rarely replace a stored one (--adaneg-entropy release, the default); both kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utils.arrays import log_softmax
from utils.models import CLIP_LOGIT_SCALE
from utils.scores.base import InDistribution, Score, as_array, l2_normalise
from utils.scores.label_mass import NegativeLabels, grouped_log_odds, id_probability
from utils.settings import Setting, fraction, non_negative_float, non_negative_int, positive_int

_RELEASE = "AdaNeg's release (YBZh/OpenOOD-VLM 694592a scripts/ood/adaneg/imagenet.sh"
ADANEG_GROUPS = Setting(
    "adaneg_groups", 5, "groups of the negatives in both grouped scores", f"{_RELEASE}: group_num=5)",
    type=positive_int, metavar="G",
)  # fmt: skip
ADANEG_MEMORY = Setting(
    "adaneg_memory", 10, "memory length L of each label's slot (L − 1 images, as released)",
    f"{_RELEASE}: memleng=10)", type=positive_int, metavar="L",
)  # fmt: skip
ADANEG_THRESHOLD = Setting(
    "adaneg_threshold", 0.5, "γ, the centre of the two write gates", f"{_RELEASE}: thres=0.5)", type=fraction,
    metavar="GAMMA",
)  # fmt: skip
ADANEG_GAP = Setting(
    "adaneg_gap", 0.5, "g, how far the write gates lie from γ (0: every image is written)", f"{_RELEASE}: gap=0.5)",
    type=non_negative_float, metavar="G",
)  # fmt: skip
ADANEG_LAMBDA = Setting(
    "adaneg_lambda", 0.1, "λ, the weight of the static NegLabel score", f"{_RELEASE}: lambdaval=0.1)",
    type=non_negative_float, metavar="LAMBDA",
)  # fmt: skip
ADANEG_BETA = Setting(
    "adaneg_beta", 5, "β of the sample-adaptive weights exp(−β(1 − cos))",
    f"{_RELEASE}: beta=5.5, which its int() makes 5)", type=non_negative_int, metavar="BETA",
)  # fmt: skip
ADANEG_PROXY = Setting(
    "adaneg_proxy", "task", "task: each label's proxy is its slot's mean; sample: weighted per image",
    f"{_RELEASE}: samada False, its final results)", choices=("task", "sample"),
)  # fmt: skip
ADANEG_NEGATIVES = Setting(
    "adaneg_negatives", 10000, "negative labels mined, shared by adjectives and nouns as their candidates are",
    "AdaNeg's release (YBZh/OpenOOD-VLM 694592a scripts/ood/adaneg/imagenet.sh: ood_number 10000)",
    type=positive_int, metavar="N",
)  # fmt: skip
ADANEG_ENTROPY = Setting(
    "adaneg_entropy", "release", "which image a full slot gives up: release = as the release's fp16 arithmetic runs "
    "(an image whose softmax has a probability that rounds to 0 in float16 gets entropy NaN: it never enters a full "
    "slot, and a NaN entry goes first); exact = the highest-entropy image, for a surer one",
    f"{_RELEASE}: OpenAI CLIP in fp16 weights, ttaprompt_postprocessor.py's entropy and torch.sort)",
    choices=("release", "exact"),
)  # fmt: skip
ADANEG_BATCH = Setting(
    "adaneg_batch", 256, "test images per memory update (the release's batch size)", f"{_RELEASE}: batch_size 256)",
    type=positive_int, metavar="B",
)  # fmt: skip


class Memory:
    """Each label's slot: its text at position 0, then up to L − 1 test image features with their entropies."""

    def __init__(self, text: np.ndarray, length: int, release: bool = True):
        self.features = np.zeros((len(text), length + 1, text.shape[1]), np.float32)
        self.features[:, 0] = text
        self.entropy = np.zeros((len(text), length + 1))
        self.count, self.length, self.release = np.ones(len(text), np.int64), length, release

    def write(self, slot: int, feature: np.ndarray, entropy: float) -> None:
        if self.count[slot] == self.length:  # full: give up the highest-entropy image, if this one is surer
            position = self._replaced(self.entropy[slot], entropy)
            if position is None:
                return
        else:
            position = int(self.count[slot])
            self.count[slot] += 1
        self.features[slot, position], self.entropy[slot, position] = feature, entropy

    def _replaced(self, stored: np.ndarray, entropy: float) -> int | None:
        """The release: every position compared (a NaN never wins), the last of torch.sort's order given up (NaNs
        sort last, then the largest; the last of equals). Exact: only the positions that hold images."""
        if not self.release:
            images = stored[1 : self.length]
            return self.length - 1 - int(np.argmax(images[::-1])) if (entropy < images).any() else None
        if not (entropy < stored).any():
            return None
        nan = np.flatnonzero(np.isnan(stored))
        return int(nan[-1]) if len(nan) else len(stored) - 1 - int(np.argmax(stored[::-1]))

    def task_proxies(self) -> np.ndarray:
        return l2_normalise(self.features.sum(axis=1, dtype=np.float64))  # the mean, normalised

    def sample_cosines(self, images: np.ndarray, beta: float) -> np.ndarray:
        """Each image's cosine to each label's sample-adaptive proxy normalise(Σ_j w_j f_j), w_j = exp(−β(1 − f_j·x)),
        as (Σ_j w_j f_j·x) / sqrt(wᵀ G w) with G the slot's Gram matrix: [images, labels], without building the
        images x labels x D proxies."""
        labels, positions, dim = self.features.shape
        similarity = (self.features.reshape(-1, dim) @ images.T.astype(np.float32)).astype(np.float64)
        similarity = similarity.reshape(labels, positions, len(images))
        weights = np.exp(-beta * (1.0 - similarity))
        features = self.features.astype(np.float64)
        gram = features @ features.transpose(0, 2, 1)  # [labels, L + 1, L + 1]
        squared_norm = np.einsum("lpb,lpq,lqb->bl", weights, gram, weights)
        return np.einsum("lpb,lpb->bl", weights, similarity) / np.sqrt(squared_norm)


def entropy(logits: np.ndarray, release: bool = True) -> float:
    """−Σ p log(p + 1e-8) of softmax(logits), as the release; `release`: NaN where a probability rounds to 0 in
    float16, as its fp16 softmax makes 0 · log(0 + 1e-8) (1e-8 is below float16's smallest number)."""
    p = np.exp(log_softmax(logits[None, :]))[0]
    if release and (p.astype(np.float16) == 0).any():
        return float("nan")
    return float(-(p * np.log(p + 1e-8)).sum())


def release_permutation(count: int) -> np.ndarray:
    """The release's group order: torch.manual_seed(0), then torch.randperm on the CPU (its `.to(device)` comes
    after), the same for every batch and independent of the stream."""
    import torch

    return torch.randperm(count, generator=torch.Generator().manual_seed(0)).numpy()


class AdaNeg(Score):
    """AdaNeg (Zhang & Zhang, NeurIPS 2024): S = S_grouped(100 · cosines to test-time-adapted proxies) + λ · S_nl,
    the proxies built from a memory of confident test images (ID class or nearest negative), 5 groups, λ = 0.1.
    Order-dependent: a run scores ID ∪ each OOD set as one seeded random stream."""

    inputs = ("adaneg_labels", "seed", "logit_scale")
    settings = (ADANEG_GROUPS, ADANEG_MEMORY, ADANEG_THRESHOLD, ADANEG_GAP, ADANEG_LAMBDA, ADANEG_BETA, ADANEG_PROXY,
                ADANEG_ENTROPY, ADANEG_BATCH)  # fmt: skip
    reads_text = True
    streams = True
    not_in_all = "its 10,000 negatives take another minute of prompts on a CPU, and its stream runs once per OOD set"

    def __init__(self, adaneg_labels: NegativeLabels | None = None, adaneg_groups: int = ADANEG_GROUPS.default,
                 adaneg_memory: int = ADANEG_MEMORY.default, adaneg_threshold: float = ADANEG_THRESHOLD.default,
                 adaneg_gap: float = ADANEG_GAP.default, adaneg_lambda: float = ADANEG_LAMBDA.default,
                 adaneg_beta: int = ADANEG_BETA.default, adaneg_proxy: str = ADANEG_PROXY.default,
                 adaneg_entropy: str = ADANEG_ENTROPY.default, adaneg_batch: int = ADANEG_BATCH.default, seed: int = 0,
                 logit_scale: float = CLIP_LOGIT_SCALE):  # fmt: skip
        super().__init__()
        if adaneg_labels is None:
            raise ValueError("AdaNeg needs adaneg_labels (ID label prompts and its negatives)")
        if adaneg_proxy not in ADANEG_PROXY.choices:
            raise ValueError(f"adaneg_proxy must be one of {', '.join(ADANEG_PROXY.choices)}, got {adaneg_proxy!r}")
        id_text, negatives = as_array(adaneg_labels.id_features), as_array(adaneg_labels.negatives)
        self.text, self.classes = l2_normalise(np.r_[id_text, negatives]), len(id_text)
        self.groups = min(adaneg_groups, len(negatives))
        self.columns = self.classes + release_permutation(
            len(negatives) - len(negatives) % self.groups
        )  # M mod G dropped
        self.length, self.batch, self.proxy = adaneg_memory, adaneg_batch, adaneg_proxy
        self.high = adaneg_threshold + adaneg_gap * (1 - adaneg_threshold)
        self.low = adaneg_threshold - adaneg_gap * adaneg_threshold
        self.weight, self.beta, self.seed, self.scale = adaneg_lambda, adaneg_beta, seed, float(logit_scale)
        self.release = adaneg_entropy == "release"

    def _fit(self, ind: InDistribution) -> None:
        pass

    def __call__(self, features: object) -> np.ndarray:
        """One set streamed alone (a run streams ID with each OOD set: `stream`)."""
        return self.stream([features])[0]

    def stream(self, parts: Sequence[object]) -> list[np.ndarray]:
        """The scores of `parts` streamed together in the seeded random order, batch by batch, from an empty memory."""
        if not self._fitted:
            raise RuntimeError("AdaNeg must be fit(...) before scoring")
        rows = np.concatenate([as_array(part) for part in parts])
        order = np.random.default_rng(self.seed).permutation(len(rows))
        memory, out = Memory(self.text, self.length, self.release), np.empty(len(rows))
        for start in range(0, len(rows), self.batch):
            batch = order[start : start + self.batch]
            out[batch] = self._batch(rows[batch], memory)
        return np.split(out, np.cumsum([len(part) for part in parts])[:-1])

    def _mass(self, logits: np.ndarray) -> np.ndarray:
        """NegLabel's grouped ID mass (a probability: AdaNeg adds two of them)."""
        return id_probability(grouped_log_odds(logits[:, : self.classes], logits[:, self.columns], self.groups))

    def _batch(self, images: np.ndarray, memory: Memory) -> np.ndarray:
        vanilla = self.scale * (images @ self.text.T).astype(np.float64)
        static = self._mass(vanilla)
        for i in np.flatnonzero(static > self.high):  # the whole batch is written before it is read
            id_logits = vanilla[i, : self.classes]
            memory.write(int(np.argmax(id_logits)), images[i], entropy(id_logits, self.release))
        for i in np.flatnonzero(static < self.low):
            negative = vanilla[i, self.classes :]
            memory.write(self.classes + int(np.argmax(negative)), images[i], entropy(negative, self.release))
        if self.proxy == "task":
            adapted = self.scale * (images.astype(np.float64) @ memory.task_proxies().T)
        else:
            adapted = self.scale * memory.sample_cosines(images, self.beta)
        return self._mass(adapted) + self.weight * static

    def details(self) -> dict[str, float]:
        """The stream, and the groups that ran (capped at the negatives' count: the run notes a cap)."""
        return {"stream_seed": self.seed, "stream_batch": self.batch, "images_per_label": self.length - 1,
                "adaneg_groups": self.groups}  # fmt: skip

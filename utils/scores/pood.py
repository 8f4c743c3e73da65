"""pytorch-ood's post-hoc detectors as scores: one wrapper, driven by a table of what each detector reads.

What the feature cache holds is all they get: the L2-normalised image embedding x [N, D], the ID train embeddings
with labels, and a linear head (logits = x Wᵀ + b): CLIP's zero-shot classifier (W = logit_scale · class prompts,
b = 0) or the linear probe. pytorch-ood returns outlier scores (higher = more OOD); each score here is its negation.
Detectors that need the network or a backbone layer's activations are listed in UNAVAILABLE with the reason.
pytorch-ood is imported on the first fit: importing it takes seconds.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.arrays import CHUNK
from utils.scores.base import InDistribution, Score, as_array
from utils.scores.knn import PAPER_K, K
from utils.scores.linear_probe import ProbeScore
from utils.scores.zero_shot import TEMPERATURE
from utils.settings import Setting

if TYPE_CHECKING:
    import torch  # imported where fitted and scored: the score registry builds the scripts' flags, without torch

PREFIX = "pood:"
HEADS = ("zero_shot", "probe")  # where a detector's head comes from (--pood-head)
POOD_HEAD = Setting(
    "pood_head", "zero_shot", "the linear head the detectors read: zero_shot = CLIP's classifier, logit_scale (100) x "
    "the class prompts, no bias; probe = the linear probe of lp_*, fitted on the ID train features", "toolkit",
    choices=HEADS,
)  # fmt: skip
BLOCK_BYTES = 1 << 28  # a scored block's per-row intermediates (GMM's K x B x D, per-sample gradients), at most
TRAIN = ("train_features", "train_labels")


@dataclass(frozen=True, eq=False)
class Head:
    """The linear classifier a detector reads: logits = x Wᵀ + b. Without a weight: the linear probe fitted on the ID
    train features (the lp_* scores' probe, fitted once through InDistribution.shared): the head's own, else those
    the detector fits on."""

    weight: np.ndarray | None = None  # C x D
    bias: np.ndarray | None = None  # C
    train_features: object | None = None  # the probe's training data, where the detector fits on none
    train_labels: np.ndarray | None = None

    @classmethod
    def probe(cls, train_features: object, train_labels: np.ndarray) -> Head:
        """The linear probe, to be fitted on these ID train features."""
        return cls(train_features=train_features, train_labels=train_labels)

    @classmethod
    def zero_shot(cls, text_features: object, logit_scale: float, logit_bias: float = 0.0) -> Head:
        """The zero-shot classifier: W = logit_scale · the class prompts' embeddings, b = the model's logit bias
        (SigLIP's; 0 for CLIP) for every class."""
        text = as_array(text_features, np.float64)
        return cls(logit_scale * text, np.full(len(text), float(logit_bias)))


PROBE = Head()


@dataclass(frozen=True)
class Parts:
    """What a detector's constructor may take: the head as a float32 module, the feature size, the fitting data and
    the score's own inputs."""

    head: torch.nn.Linear | None
    dim: int
    ind: InDistribution
    given: dict[str, Any]


@dataclass(frozen=True)
class Detector:
    """One pytorch-ood detector: its class, what it reads and is fitted on, its constructor arguments."""

    cls: str  # class name in pytorch_ood.detector
    doc: str  # paper and formula (as an in-distribution score), one line
    reads: str  # features: predict_features(x); logits: predict_logits(x Wᵀ + b); head: predict(x), the head its model
    fit: str | Callable | None = None  # features: fit_features(train x, y); logits: fit_logits(train logits, y); or
    # a function (detector, train x, train y) that fits it
    args: Callable[[Parts], dict] = lambda parts: {}
    head: bool = True  # reads the linear head
    needs: tuple[str, ...] = TRAIN
    settings: tuple[Setting, ...] = ()  # the settings it reads besides the head's
    row_bytes: Callable[[int, int], int] | None = None  # (classes, dim) -> bytes per scored row, where rows add up
    covariance: str | None = None  # "shared" / "per_class": warn where the training features cannot fill it


def vim_dim(dim: int) -> int:
    """ViM's principal dimension d: the official code's rule (1000 for D >= 2048, else 512) where it leaves a
    residual, D // 2 (pytorch-ood's fallback) where it would not (D <= 512, e.g. CLIP ViT-B's 512)."""
    return 1000 if dim >= 2048 else 512 if dim > 512 else dim // 2


def _head(parts: Parts) -> dict:
    return {"head": parts.head}


def _fit_she(detector: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    """SHE's fit_features, except that a class without a correctly classified train feature (pytorch-ood raises
    there: a weak head, e.g. zero-shot on an unfamiliar domain) gets the mean of all its train features, with a
    warning."""
    import torch

    with torch.no_grad():
        correct = detector.head(x).argmax(dim=1) == y
    missing = sorted(set(range(int(y.max()) + 1)) - set(y[correct].tolist()))
    if not missing:
        detector.fit_features(x, y)
        return
    warnings.warn(f"{PREFIX}she: no correctly classified train feature in classes {missing[:10]}"
                  f"{' ...' if len(missing) > 10 else ''} ({len(missing)} of {int(y.max()) + 1}); their patterns are "
                  f"the means of all their train features", stacklevel=4)  # fmt: skip
    keep = correct | torch.isin(y, torch.tensor(missing))
    detector.patterns = torch.stack([x[(y == c) & keep].mean(dim=0) for c in range(int(y.max()) + 1)])


def _tensor(array: object) -> torch.Tensor:
    import torch

    return torch.from_numpy(as_array(array))


DETECTORS: dict[str, Detector] = {
    d.cls.lower(): d
    for d in [
        Detector("ViM", "ViM (Wang et al., CVPR 2022): logsumexp(f) − α‖x^P⊥‖, the residual off the top-d principal "
                 "subspace of the ID train features (centred at −W⁺b), α = mean max-logit / mean residual on train",
                 "features", "features", lambda p: {"d": vim_dim(p.dim), "w": p.head.weight, "b": p.head.bias}),
        Detector("GEN", "GEN (Liu et al., CVPR 2023): −Σ_top-M p^γ (1 − p)^γ / M, p = softmax(f), γ = 0.1, M = 100",
                 "logits", args=lambda p: {"gamma": 0.1, "M": 100}),
        Detector("NNGuide", "NNGuide (Park et al., ICCV 2023): energy(x) · mean of the k = 10 largest ⟨x̂, E(z) ẑ⟩ over "
                 "the ID train features z (the whole train set as the bank)", "features", "features",
                 lambda p: {"head": p.head, "k": 10}, row_bytes=lambda c, d: 8 << 16),
        Detector("fDBD", "fDBD (Liu & Qin, ICML 2024): mean over c ≠ ŷ of |f_ŷ − f_c| / ‖w_ŷ − w_c‖, divided by "
                 "‖x − μ_train‖", "features", "features", _head),
        Detector("KLMatching", "KL-Matching (Hendrycks et al., ICML 2022): −min_k KL(p ‖ d_k), d_k the mean posterior "
                 "of the ID train features predicted as k", "logits", "logits"),
        Detector("SHE", "SHE (Zhang et al., ICLR 2023): xᵀ S_ŷ, S_c the mean of the correctly classified ID train "
                 "features of class c", "features", _fit_she, _head),
        Detector("NCI", "NCI (Liu & Qin, CVPR 2025): cos(x − μ_train, w_ŷ) (α = 0: no feature-norm term)", "features",
                 "features", lambda p: {"head": p.head, "alpha": 0.0}),
        Detector("PNML", "pNML regret (Bibas et al., NeurIPS 2021): −log Σ_c p_c / (p_c + (1 − p_c) p_c^κ) / log C, "
                 "κ from x's projection on the ID train features' Gram inverse", "features", "features", _head),
        Detector("MaxSoftmax", "MSP (Hendrycks & Gimpel, ICLR 2017): max_c softmax(f)_c", "logits"),
        Detector("MaxLogit", "MaxLogit (Hendrycks et al., ICML 2022): max_c f_c", "logits"),
        Detector("EnergyBased", "Energy (Liu et al., NeurIPS 2020): logsumexp_c f_c (T = 1)", "logits"),
        Detector("Entropy", "Entropy (Chan et al., ICCV 2021): −H(softmax(f))", "logits"),
        Detector("TemperatureScaling", "Temperature scaling (Guo et al., ICML 2017): max_c softmax(f/T)_c, T fitted "
                 "by NLL on the ID train logits", "logits", "logits"),
        Detector("GradNorm", "GradNorm (Huang et al., NeurIPS 2021): ‖∂ KL(u ‖ softmax(f)) / ∂W‖₁ of the head's "
                 "weight (T = 1) = ‖softmax(f) − u‖₁ · ‖x‖₁ (on unit embeddings ‖x‖₁ is their spread, not a size)",
                 "head", args=lambda p: {"param_filter": lambda name: name == "weight"}),
        Detector("GradUncertainty", "Gradient uncertainty (Lee & AlRegib, ICIP 2020): Σ ‖∂ BCE(softmax(f), 1) / ∂θ‖² "
                 "over the head's weight and bias", "head", row_bytes=lambda c, d: 4 * c * (d + 1)),
        Detector("Mahalanobis", "Mahalanobis (Lee et al., NeurIPS 2018): −½ min_c (x − μ_c)ᵀ Σ⁻¹ (x − μ_c), Σ the "
                 "summed class-centred outer products + 1e-6 I", "features", "features", head=False,
                 covariance="shared"),
        Detector("RMD", "Relative Mahalanobis (Ren et al., 2021): −min_c [d_c(x) − d_0(x)], d_0 under one Gaussian of "
                 "all ID train features", "features", "features", head=False, covariance="shared"),
        Detector("GMM", "Class-conditional Gaussian mixture: log Σ_c π_c N(x | μ_c, Σ_c + 1e-6 I), one covariance "
                 "per class", "features", "features", head=False, row_bytes=lambda c, d: 24 * c * d,
                 covariance="per_class"),
        Detector("KNN", "Deep nearest neighbours (Sun et al., ICML 2022): −‖x̂ − ẑ_(k)‖ (scikit-learn; k the largest "
                 "--k)", "features", "features", lambda p: {"k": p.given["k"]}, head=False, settings=(K,)),
        Detector("MCM", "MCM (Ming et al., NeurIPS 2022): max_c softmax(cos(x, t_c) / T)_c over the class prompts t",
                 "features", args=lambda p: {"text_embeddings": _tensor(p.ind.text_features),
                                             "temperature": p.given["temperature"]},
                 head=False, needs=("text_features",), settings=(TEMPERATURE,)),
    ]
}  # fmt: skip

_NOT_CACHED = ("which the feature cache does not hold: it stores CLIP's projected, L2-normalised image embedding "
               "(signed, no ReLU before it)")  # fmt: skip
UNAVAILABLE: dict[str, str] = {
    "ReAct": f"clips the penultimate layer's rectified activations before the head, {_NOT_CACHED}",
    "ASH": f"prunes and rescales a backbone layer's rectified activations before the head, {_NOT_CACHED}",
    "SCALE": f"rescales a backbone layer's rectified activations by their top share before the head, {_NOT_CACHED}",
    "VRA": f"clips a backbone layer's activations at per-unit ID percentiles before the head, {_NOT_CACHED}",
    "DICE": f"sparsifies the head by the mean contribution of each rectified penultimate unit, {_NOT_CACHED}",
    "LTS": f"scales the logits by the top share of the rectified penultimate activations, {_NOT_CACHED}",
    "RankFeat": "removes the rank-1 part of a block's feature maps [B, C, H, W], which the feature cache does not hold",
    "Gram": "needs feature maps of several layers (their Gram matrices), which the feature cache does not hold",
    "MultiMahalanobis": "needs features of several layers, which the feature cache does not hold",
    "ODIN": "needs the network: it perturbs the input image along the gradient of the softmax score",
    "MahalanobisODIN": "needs the network: it perturbs the input image along the gradient of the Mahalanobis distance",
    "NACUE": "needs the network: neuron activation coverage of several layers, from gradients through them",
    "MCD": "needs the network: several forward passes with dropout active",
    "WeightedEBO": "needs class weights learned with VOS's regulariser (pytorch_ood.loss.VOSRegLoss) in training",
    "OpenMax": "is not a per-image score in pytorch-ood 0.4: it measures distances only to the classes that some row "
    "of the same batch predicts (0 for the others), so an image's score depends on the batch it is scored in",
}


class PoodScore(Score):
    """A pytorch-ood detector (the subclass's `spec`) fitted on the ID train features, negated.

    `head`: the classifier it reads (default: the linear probe, which needs only the train features; a run passes the
    one --pood-head names); `seed`, `device`: the probe's fit; `k`: KNN's (the largest, given several); `temperature`:
    MCM's.
    """

    spec: Detector

    def __init__(self, head: Head = PROBE, seed: int = 0, device: str | torch.device = "cpu",
                 k: int | Sequence[int] = PAPER_K, temperature: float = TEMPERATURE.default):  # fmt: skip
        super().__init__()
        self.head, self.seed, self.device = head, seed, device
        self.given = {"k": int(max(k) if isinstance(k, Sequence) else k), "temperature": float(temperature)}

    def _fit(self, ind: InDistribution) -> None:
        import torch

        spec = self.spec
        train = spec.fit is not None
        x = torch.from_numpy(as_array(ind.train_features)) if train else None
        y = torch.from_numpy(np.asarray(ind.train_labels, np.int64)) if train else None
        self.linear = self._linear(ind) if spec.head else None
        dim = (self.linear.in_features if self.linear is not None else x.shape[1] if x is not None
               else as_array(ind.text_features).shape[1])  # fmt: skip
        if spec.covariance:
            _warn_if_singular(spec, y.numpy(), dim)
        model = self.linear if spec.reads == "head" else None
        self.detector = getattr(importlib.import_module("pytorch_ood.detector"), spec.cls)(
            model, **spec.args(Parts(self.linear, dim, ind, self.given))
        )
        try:
            if spec.fit == "features":
                self.detector.fit_features(x, y)
            elif spec.fit == "logits":
                self.detector.fit_logits(self._logits(x), y)
            elif spec.fit is not None:
                spec.fit(self.detector, x, y)
        except AssertionError as err:  # Mahalanobis, RMD and SHE assert that the labels are 0..C-1, all present
            raise ValueError(f"{spec.cls} needs training features of every class 0..{int(y.max())}") from err
        classes = self.linear.out_features if self.linear is not None else 1
        self.rows = CHUNK if spec.row_bytes is None else max(1, BLOCK_BYTES // spec.row_bytes(classes, dim))

    def _linear(self, ind: InDistribution) -> torch.nn.Linear:
        """The head as a float32 module (what pytorch-ood's detectors call), its float64 weights kept for logits."""
        import torch

        weight, bias = self.head.weight, self.head.bias
        if weight is None:
            if self.head.train_features is not None:
                ind = InDistribution(train_features=self.head.train_features, train_labels=self.head.train_labels,
                                     shared=ind.shared)  # fmt: skip
            probe = ProbeScore(seed=self.seed, device=self.device).fit(ind).probe  # shared with lp_*
            weight, bias = probe.weight, probe.bias
        self.w64 = torch.from_numpy(np.asarray(weight, np.float64))
        self.b64 = torch.from_numpy(np.asarray(bias, np.float64))
        linear = torch.nn.Linear(self.w64.shape[1], self.w64.shape[0])
        with torch.no_grad():
            linear.weight.copy_(self.w64)
            linear.bias.copy_(self.b64)
        return linear.requires_grad_(False)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x Wᵀ + b in float64: softmax-based detectors saturate at p = 1 much later than in float32."""
        return x.double() @ self.w64.T + self.b64

    def _score(self, features: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(features)
        out = []
        for start in range(0, len(x), self.rows):
            part = x[start : start + self.rows]
            with torch.no_grad():  # the gradient detectors enable gradients where they need them
                if self.spec.reads == "features":
                    outlier = self.detector.predict_features(part)
                elif self.spec.reads == "logits":
                    outlier = self.detector.predict_logits(self._logits(part))
                else:
                    outlier = self.detector.predict(part)
            out.append(outlier.detach().cpu().double().numpy())
        return -np.concatenate(out)


def _warn_if_singular(spec: Detector, labels: np.ndarray, dim: int) -> None:
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    rows = int(counts.min()) - 1 if spec.covariance == "per_class" else len(labels) - len(counts)
    if rows < dim:
        which = "the smallest class's covariance" if spec.covariance == "per_class" else "the shared covariance"
        warnings.warn(f"{PREFIX}{spec.cls.lower()}: {which} is estimated from {rows} degrees of freedom in {dim} "
                      f"dimensions; pytorch-ood's 1e-6 ridge makes it invertible, and the unseen directions dominate "
                      f"the distances (use more training images than dimensions)", stacklevel=4)  # fmt: skip


def _score_class(spec: Detector) -> type[PoodScore]:
    inputs = ("head", "seed", "device") if spec.head else ()
    needs = spec.needs if spec.fit is not None or not spec.head else ()  # the head alone: the probe's data come in it
    return type(f"Pood{spec.cls}", (PoodScore,), {"spec": spec, "needs": needs, "inputs": inputs,
                                                   "settings": spec.settings, "__doc__": spec.doc,
                                                   "__module__": __name__})  # fmt: skip


POOD_SCORES: dict[str, type[PoodScore]] = {PREFIX + key: _score_class(spec) for key, spec in DETECTORS.items()}
POOD_UNAVAILABLE: dict[str, str] = {PREFIX + name.lower(): reason for name, reason in UNAVAILABLE.items()}

__all__ = ["DETECTORS", "HEADS", "POOD_HEAD", "POOD_SCORES", "POOD_UNAVAILABLE", "PREFIX", "PROBE", "Head", "PoodScore",
           "vim_dim"]  # fmt: skip

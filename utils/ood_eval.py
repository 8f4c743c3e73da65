"""The OOD evaluation pipeline: encode every dataset once through the cache, then score it every way asked."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.arrays import as_array
from utils.cache import FeatureCache
from utils.data import LoadedDataset, get_spec, load_dataset
from utils.errors import UserError
from utils.features import image_features
from utils.metrics import bootstrap_intervals, ood_metrics
from utils.models import ModelBundle
from utils.negatives import negative_labels
from utils.prompts import Template, text_head
from utils.scores import SCORES, InDistribution, Score, build_score, needs_text
from utils.scores.knn import KNN
from utils.scores.label_mass import GroupOthers, KPlusOne, NegLabel, Oracle
from utils.scores.linear_probe import _ProbeScore
from utils.scores.zero_shot import ZeroShotScore


@dataclass
class DataOptions:
    root: str | Path = "./data"
    download: bool = True
    limit: int | None = None
    seed: int = 0

    def load(self, name: str, split: str) -> LoadedDataset:
        return load_dataset(name, split, self.root, self.download, self.limit, self.seed)


@dataclass
class EvalOptions:
    templates: Sequence[Template]
    temperature: float = 1.0
    ks: Sequence[int] | None = None  # None: the ID dataset's default k
    batch_size: int = 256
    workers: int = 4
    bootstrap: int = 0
    seed: int = 0
    neg_words: str | None = None  # NegLabel's candidate list; None: the shipped WordNet list
    checkpoint_meta: dict = field(default_factory=dict)  # what finetune_clip.py saved beside the weights


@dataclass
class Evaluation:
    """Everything a run produced; `scores[label][ood_set]` = (ID test scores, OOD scores), per image."""

    id_name: str
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    negative_words: list[str] | None = None


def knn_ks(id_name: str, ks: Sequence[int] | None) -> list[int]:
    """The k values of a run: those asked for, else the ID dataset's default."""
    return sorted(set(ks or [get_spec(id_name).knn_k]))


def fitted(score_name: str) -> bool:
    """Whether a score learns from ID training features."""
    return "train_features" in SCORES[score_name].needs


def resolve_ood_sets(id_name: str, requested: Sequence[str] | None, options: DataOptions) -> list[LoadedDataset]:
    """OOD test sets: those named (each must be available) or the ID set's defaults (missing ones skipped)."""
    names = list(requested) if requested else [n for n in get_spec(id_name).ood if n != id_name]
    if not names:
        raise UserError(f"'{id_name}' has no default OOD sets; name some with --out")
    for name in names:
        get_spec(name)  # unknown names fail before any download starts
    loaded = []
    for name in names:
        try:
            loaded.append(options.load(name, "test"))
        except UserError as err:
            if requested:
                raise
            reason = " ".join(line.strip() for line in str(err).splitlines())
            print(f"skipping default OOD set {name}: {reason}", file=sys.stderr)
    if not loaded:
        raise UserError(
            f"none of the default OOD sets of '{id_name}' ({', '.join(names)}) is available under "
            f"{options.root}; get one (see the lines above) or name a folder with --out folder:PATH"
        )
    return loaded


def top1(logits: Callable[[np.ndarray], np.ndarray], features: object, labels: np.ndarray) -> float | None:
    """Top-1 accuracy of argmax classification; None if the set has no labels."""
    if len(labels) == 0 or labels.min() < 0:
        return None
    predictions = np.concatenate(
        [logits(as_array(features[i : i + 8192])).argmax(1) for i in range(0, len(labels), 8192)]
    )
    return float(np.mean(predictions == labels))


@dataclass
class _Context:
    bundle: ModelBundle
    id_data: LoadedDataset
    id_features: np.ndarray
    ood: dict[str, object]  # OOD set name -> cached features
    ood_data: dict[str, LoadedDataset]
    ind: InDistribution
    options: EvalOptions
    cache: FeatureCache
    result: Evaluation


# A plan: (row label, fitted score, OOD sets it applies to or None for all). Planners are chosen by score class.
Plan = tuple[str, Score, list[str] | None]


# Hyper-parameters each family takes from the run's options.
FAMILY_KWARGS: dict[type[Score], Callable[[_Context], dict]] = {
    ZeroShotScore: lambda ctx: {"temperature": ctx.options.temperature},
    _ProbeScore: lambda ctx: {"seed": ctx.options.seed, "device": str(ctx.bundle.device)},
}


def _plan_default(ctx: _Context, name: str) -> list[Plan]:
    kwargs = next((make(ctx) for family, make in FAMILY_KWARGS.items() if issubclass(SCORES[name], family)), {})
    return [(name, build_score(name, **kwargs).fit(ctx.ind), None)]


def _plan_oracle(ctx: _Context, name: str) -> list[Plan]:
    plans = []
    for ood_name, data in ctx.ood_data.items():
        if not data.classnames:
            ctx.result.notes.append(f"oracle: skipped {ood_name}, which has no class names")
            continue
        ood_text = text_head(ctx.bundle.model, ctx.bundle.tokenizer, data.classnames, ctx.options.templates,
                             ctx.bundle.device).cpu().numpy()  # fmt: skip
        plans.append((name, build_score(name, ood_text_features=ood_text).fit(ctx.ind), [ood_name]))
    return plans


def _plan_neglabel(ctx: _Context, name: str) -> list[Plan]:
    words, features = negative_labels(ctx.bundle, ctx.id_data.classnames, ctx.ind.text_features,
                                      ctx.options.templates, ctx.cache, ctx.options.neg_words)  # fmt: skip
    ctx.result.negative_words = words
    return [(name, build_score(name, negative_text_features=features).fit(ctx.ind), None)]


def _prompt_features(ctx: _Context, prompts: Sequence[str]) -> np.ndarray:
    """Whole prompts (not class names) through the text encoder."""
    return text_head(ctx.bundle.model, ctx.bundle.tokenizer, list(prompts), ["{}"], ctx.bundle.device).cpu().numpy()


def _plan_kplus1(ctx: _Context, name: str) -> list[Plan]:
    meta = ctx.options.checkpoint_meta
    ood = _prompt_features(ctx, [meta["ood_prompt"]])
    score = build_score(name, ood_prompt_features=ood, logit_scale=meta.get("logit_scale", 100.0))
    return [(name, score.fit(ctx.ind), None)]


def _plan_group(ctx: _Context, name: str) -> list[Plan]:
    meta = ctx.options.checkpoint_meta
    index = {c: k for k, c in enumerate(ctx.id_data.classnames)}
    unknown = [c for g in meta["groups"] for c in g["classes"] if c not in index]
    if unknown:
        raise UserError(f"the checkpoint's groups name classes {unknown[:5]} that {ctx.id_data.name} does not have")
    members = [[index[c] for c in g["classes"]] for g in meta["groups"]]
    others = _prompt_features(ctx, [meta["others_prompt"].format(g["name"]) for g in meta["groups"]])
    score = build_score(name, groups=members, others_features=others, logit_scale=meta.get("logit_scale", 100.0))
    return [(name, score.fit(ctx.ind), None)]


PLANNERS: dict[type[Score], Callable[[_Context, str], list[Plan]]] = {
    Oracle: _plan_oracle,
    NegLabel: _plan_neglabel,
    KPlusOne: _plan_kplus1,
    GroupOthers: _plan_group,
}


def _score_knn(ctx: _Context, ks: Sequence[int]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every k, for the ID test set and every OOD set together, from one pass over the training bank."""
    knn = KNN(k=max(ks), device=ctx.bundle.device).fit(ctx.ind)
    parts = {"": ctx.id_features, **{name: f.features for name, f in ctx.ood.items()}}
    ends = np.cumsum([len(f) for f in parts.values()])
    swept = knn.sweep(np.concatenate([as_array(f) for f in parts.values()]), ks)
    split = {k: dict(zip(parts, np.split(values, ends[:-1]), strict=True)) for k, values in swept.items()}
    return {f"knn@{k}": {name: (split[k][""], split[k][name]) for name in ctx.ood} for k in ks}


def evaluate(
    bundle: ModelBundle,
    id_test: LoadedDataset,
    ood_sets: Sequence[LoadedDataset],
    score_names: Sequence[str],
    options: EvalOptions,
    cache: FeatureCache,
    id_train: LoadedDataset | None = None,
) -> Evaluation:
    """Every score against every OOD set; each dataset is encoded at most once (not at all on a cache hit)."""
    result = Evaluation(id_test.name)
    text = None
    if any(needs_text(n) for n in score_names):
        if not bundle.has_text:
            raise UserError(f"{', '.join(n for n in score_names if needs_text(n))} need a text encoder; "
                            f"{bundle.name} is image-only")  # fmt: skip
        if not id_test.classnames:
            raise UserError(f"ID dataset '{id_test.name}' has no class names; zero-shot scores need them")
        text = text_head(bundle.model, bundle.tokenizer, id_test.classnames, options.templates, bundle.device)
        text = text.cpu().numpy()
    train = None
    if any(fitted(n) for n in score_names):
        if id_train is None:
            raise UserError(f"{', '.join(n for n in score_names if fitted(n))} need the ID train split")
        train = image_features(bundle, id_train, cache, options.batch_size, options.workers)
    id_feats = image_features(bundle, id_test, cache, options.batch_size, options.workers)
    ood = {d.name: image_features(bundle, d, cache, options.batch_size, options.workers) for d in ood_sets}
    result.samples = {"ID": len(id_feats.index), **{k: len(v.index) for k, v in ood.items()}}
    ind = InDistribution(
        text_features=text,
        train_features=train.features if train is not None else None,  # memory-mapped: scores stream over it
        train_labels=train.labels if train is not None else None,
    )
    ctx = _Context(bundle, id_test, id_feats.features, ood, {d.name: d for d in ood_sets}, ind, options, cache, result)
    for name in score_names:
        try:
            if SCORES[name] is KNN:
                result.scores.update(_score_knn(ctx, knn_ks(id_test.name, options.ks)))
                continue
            plans = PLANNERS.get(SCORES[name], _plan_default)(ctx, name)
        except ValueError as err:  # what a score cannot fit on (too few samples, unlabelled data, ...)
            raise UserError(f"score {name}: {err}") from err
        for label, score, only in plans:
            id_scores = score(id_feats.features)  # per plan: the oracle's ID scores depend on the OOD names
            for ood_name in only or ood:
                result.scores.setdefault(label, {})[ood_name] = (id_scores, score(ood[ood_name].features))
    if text is not None:
        result.accuracy["zero_shot_top1"] = top1(lambda f: f @ text.T, id_feats.features, id_feats.labels)
    probes = [v for k, v in ind.shared.items() if isinstance(k, tuple) and k[0] == "probe"]
    if probes:
        result.accuracy["linear_probe_top1"] = top1(probes[0].logits, id_feats.features, id_feats.labels)
        result.accuracy["linear_probe_C"] = probes[0].C
    result.accuracy = {k: v for k, v in result.accuracy.items() if v is not None}
    for label, per_set in result.scores.items():
        for ood_name, (id_scores, ood_scores) in per_set.items():
            try:
                result.metrics.setdefault(label, {})[ood_name] = ood_metrics(id_scores, ood_scores)
                if options.bootstrap:
                    result.intervals.setdefault(label, {})[ood_name] = bootstrap_intervals(
                        id_scores, ood_scores, options.bootstrap, options.seed
                    )
            except ValueError as err:
                raise UserError(f"score {label}, {id_test.name} vs {ood_name}: {err}") from err
    return result

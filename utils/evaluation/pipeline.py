"""The OOD evaluation pipeline in stages: plan, encode, score, measure.

plan: which scores can run here; encode: every dataset once, through the cache; score: fit each score on what it
needs, then score the ID test set and every OOD set; measure: metrics and bootstrap intervals.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utils.arrays import as_array
from utils.data.splits import LoadedDataset
from utils.errors import UserError
from utils.evaluation.classification import top1
from utils.evaluation.inputs import (
    Encoded,
    Experiment,
    PerSet,
    needs_train,
    requirements,
    resolver,
    score_settings,
    unavailable,
)
from utils.evaluation.metrics import bootstrap_intervals, ood_metrics
from utils.features.images import DEFAULT_VIEW, VIEWS, image_features, view_sources
from utils.features.store import CachedFeatures
from utils.features.text import text_embeddings
from utils.scores import SCORES, InDistribution, Score, canonical, resolve_scores

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # OOD set -> (ID test scores, OOD scores), per image


@dataclass
class Evaluation:
    """Everything a run produced; `scores[label][ood_set]` = (ID test scores, OOD scores), per image."""

    id_name: str
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    scores: dict[str, Pairs] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    artifacts: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # mean rows over sets (OpenOOD's near/far)
    skipped: dict[str, str] = field(default_factory=dict)  # OOD sets of the benchmark that were not scored -> why
    ran: dict[str, dict[str, Any]] = field(default_factory=dict)  # score -> what it ran with (Score.details)


def plan(requested: Sequence[str], exp: Experiment) -> list[str]:
    """The scores to run: those named (each must be able to run here) and, for `all`, every one that can.

    What `all` leaves out is printed with the reason; a named score that cannot run is a UserError.
    """
    try:
        scores = resolve_scores(requested)
        named = {canonical(n) for n in requested if n.lower() != "all"}
    except ValueError as err:
        raise UserError(str(err)) from err
    declared = score_settings()
    if unknown := sorted(set(exp.options.settings) - set(declared)):
        raise UserError(f"unknown settings {', '.join(unknown)}; known: {', '.join(declared)}")
    if any(name.lower() == "all" for name in requested) and (left := [k for k in SCORES if k not in scores]):
        why = "; ".join(f"{k}: {SCORES[k].not_in_all}" for k in left)
        print(f"--score all leaves out {', '.join(left)} (name them to run them): {why}", file=sys.stderr)
    skipped: dict[str, list[str]] = {}
    for score in scores:
        reason = unavailable(score, exp)
        if reason and score in named:
            raise UserError(f"{score} {reason}")
        if reason:
            skipped.setdefault(reason, []).append(score)
    for reason, names in skipped.items():
        print(f"skipping {', '.join(names)}: {reason}", file=sys.stderr)
    runnable = [s for s in scores if not any(s in names for names in skipped.values())]
    if not runnable:
        raise UserError(f"none of the scores {', '.join(scores)} can run here: {next(iter(skipped))}")
    return runnable


def encode(exp: Experiment, scores: Sequence[str]) -> Encoded:
    """Image features of every dataset in every view the scores use (ID train only if a score fits on it), and the
    ID class-prompt embeddings if a score compares with them. Under torchrun every rank must call this."""
    options, views = exp.options, list(dict.fromkeys(SCORES[s].view for s in scores))

    def features(data: LoadedDataset, view: str = DEFAULT_VIEW):
        return image_features(exp.bundle, data, exp.cache, options.batch_size, options.workers, exp.world, view)

    sources = view_sources(views)

    def every_view(data: LoadedDataset) -> dict[str, CachedFeatures]:
        """Each view encoded once, or read out of a view that holds it (the global rows are the local view's first
        token): a set that needs both goes through the model once."""
        encoded = {view: features(data, view) for view in views if sources[view] == view}
        for view, source in sources.items():
            if source != view:
                encoded[view] = VIEWS[view].within[source](encoded[source], exp.bundle)
        return encoded

    id_train = features(exp.id_train) if needs_train(scores, options) else None
    id_test = every_view(exp.id_test)
    ood = {data.name: every_view(data) for data in exp.ood_sets}
    text = None  # the scoring rank's alone: under torchrun the others stop after encoding the images
    if any("text_features" in requirements(score) for score in scores) and (exp.world is None or exp.world.main):
        text = text_embeddings(exp.bundle, exp.id_test.classnames, options.templates)
    return Encoded(id_test, ood, id_train, text)


@dataclass
class _Fitted:
    label: str  # the row label: the score's name, `name@value` for each value of a sweep
    score: Score
    sets: list[str]  # the OOD sets it scores
    sweep: list | None = None


def _build(name: str, exp: Experiment, encoded: Encoded, resolved: dict, shared: dict) -> list[_Fitted]:
    """One fitted instance of `name` (one per OOD set where an input has a value per set).

    `resolved` keeps each input once resolved for the scores after it; `shared` the fits that scores share.
    """
    cls = SCORES[name]
    for need in requirements(name):
        if need not in resolved:
            before = len(exp.notes)
            resolved[need] = resolver(need).resolve(exp, encoded)
            exp.notes[before:] = [f"{name}: {note}" for note in exp.notes[before:]]
    ind = InDistribution(**{need: resolved[need] for need in cls.needs}, shared=shared.setdefault(cls.view, {}))
    kwargs = {i: resolved[i] for i in cls.arguments()}
    sweep = kwargs.pop(cls.sweep_over) if cls.sweep_over else None
    if sweep is not None:
        kwargs[cls.sweep_over] = max(sweep)
    per_set = {i: v for i, v in kwargs.items() if isinstance(v, PerSet)}
    all_sets = [d.name for d in exp.ood_sets]
    if not per_set:
        return [_Fitted(name, cls(**kwargs).fit(ind), all_sets, sweep)]
    sets = [s for s in all_sets if all(s in v for v in per_set.values())]
    return [_Fitted(name, cls(**{**kwargs, **{i: v[s] for i, v in per_set.items()}}).fit(ind), [s], sweep)
            for s in sets]  # fmt: skip


def _scores_of(fitted: _Fitted, id_features: object, ood: dict[str, dict[str, CachedFeatures]]) -> dict[str, Pairs]:
    """ID and OOD scores of one fitted instance: a sweep scores all sets in one call (one pass over a KNN bank), an
    order-dependent score (`streams`) the ID set with each OOD set as one stream (so its ID scores differ per set),
    any other score each (memory-mapped) set on its own."""
    parts = [id_features, *(ood[s][fitted.score.view].features for s in fitted.sets)]
    if fitted.score.streams:  # order-dependent (AdaNeg): ID ∪ each OOD set, one stream each
        pairs = {s: tuple(fitted.score.stream([id_features, part])) for s, part in zip(fitted.sets, parts[1:],
                                                                                       strict=True)}  # fmt: skip
        return {fitted.label: pairs}
    if fitted.sweep:
        joined, ends = np.concatenate([as_array(p) for p in parts]), np.cumsum([len(p) for p in parts])[:-1]
        values = {value: np.split(scored, ends) for value, scored in fitted.score.sweep(joined, fitted.sweep).items()}
    else:
        values = {None: [fitted.score(p) for p in parts]}
    rows = {}
    for value, (id_scores, *per_set) in values.items():
        label = fitted.label if value is None else f"{fitted.label}@{value}"
        rows[label] = {s: (id_scores, o) for s, o in zip(fitted.sets, per_set, strict=True)}
    return rows


def _record_details(name: str, details: dict[str, Any], exp: Experiment, result: Evaluation) -> None:
    """What a score ran with, into result.ran; a setting it could not honour (a cap) gets one note."""
    if not details:
        return
    result.ran.setdefault(name, {}).update(details)
    declared = score_settings()
    for key, value in details.items():
        if key in declared and value != (asked := exp.options.value(declared[key][0])):
            others = ", ".join(f"{k} {v}" for k, v in details.items() if k != key)
            note = f"{name}: {key} {value} ran, not the {asked} asked{f' ({others})' if others else ''}"
            if note not in exp.notes:
                exp.notes.append(note)


def score(exp: Experiment, encoded: Encoded, scores: Sequence[str]) -> Evaluation:
    """Fit every score on what it needs and score the ID test set and each OOD set; classifiers' top-1 too."""
    result = Evaluation(exp.id_test.name)
    resolved, shared, classifiers = {}, {}, {}
    exp.notes[:] = exp.run_notes  # then what the resolvers say about this scoring (a second call starts afresh)
    exp.artifacts.clear()
    for name in scores:
        try:
            for fitted in _build(name, exp, encoded, resolved, shared):
                rows = _scores_of(fitted, encoded.id_test[fitted.score.view].features, encoded.ood)
                for label, pairs in rows.items():  # instances of one score per OOD set fill one row label
                    result.scores.setdefault(label, {}).update(pairs)
                if fitted.score.classifier:
                    classifiers.setdefault(fitted.score.classifier, fitted.score)
                _record_details(name, fitted.score.details(), exp, result)
        except ValueError as err:  # what a score cannot fit on (too few samples, unlabelled data, ...)
            raise UserError(f"score {name}: {err}") from err
    result.samples = {"ID": len(next(iter(encoded.id_test.values())).index),
                      **{n: len(next(iter(v.values())).index) for n, v in encoded.ood.items()}}  # fmt: skip
    test = encoded.id_test.get(DEFAULT_VIEW)
    if encoded.text is not None and test is not None:
        result.accuracy["zero_shot_top1"] = top1(lambda f: f @ encoded.text.T, test.features, test.labels)
    for kind, classifier in classifiers.items():
        features = encoded.id_test[classifier.view]
        result.accuracy[f"{kind}_top1"] = top1(classifier.logits, features.features, features.labels)
        result.accuracy.update({f"{kind}_{k}": v for k, v in classifier.details().items()})
    result.accuracy = {k: v for k, v in result.accuracy.items() if v is not None}
    result.notes, result.artifacts = list(exp.notes), dict(exp.artifacts)
    return result


def measure(result: Evaluation, bootstrap: int = 0, seed: int = 0, extra: Sequence[str] = ()) -> Evaluation:
    """Metrics of every (score, OOD set) pair (`extra`: EXTRA_METRICS names), with bootstrap intervals if asked;
    fills `result` in place."""
    for label, per_set in result.scores.items():
        for ood_name, (id_scores, ood_scores) in per_set.items():
            try:
                result.metrics.setdefault(label, {})[ood_name] = ood_metrics(id_scores, ood_scores, extra)
                if bootstrap:
                    intervals = bootstrap_intervals(id_scores, ood_scores, bootstrap, seed)
                    result.intervals.setdefault(label, {})[ood_name] = intervals
                    values = result.metrics[label][ood_name]
                    if outside := [m for m, (low, high) in intervals.items() if not low <= values[m] <= high]:
                        result.notes.append(f"{label} vs {ood_name}: {', '.join(outside)} lie outside their bootstrap "
                                            f"interval (a skewed statistic on these few images)")  # fmt: skip
            except ValueError as err:
                raise UserError(f"score {label}, {result.id_name} vs {ood_name}: {err}") from err
    return result


def evaluate(exp: Experiment, scores: Sequence[str], encoded: Encoded | None = None) -> Evaluation:
    """encode (unless given) -> score -> measure."""
    encoded = encoded if encoded is not None else encode(exp, scores)
    options = exp.options
    return measure(score(exp, encoded, scores), options.bootstrap, options.seed, options.extra_metrics)

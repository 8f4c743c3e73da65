"""Hyper-parameters chosen on validation data (--select), before any test set is encoded.

Each score's grid is scored on ID validation images against OOD validation sets; the best mean AUROC is kept
(OpenOOD's APS criterion), and only then are the test sets encoded and scored.

Validation data: OpenOOD's ID val list and its val OOD list for an openood_* benchmark; otherwise a seeded slice
held out of the ID train split (scores fit on the rest while choosing) against OOD sets the user names, which may
not be test sets.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch.utils.data import Subset

from utils.data import openood
from utils.data.loading import DataOptions, LoadedDataset, dataset_identity, labels_of
from utils.data.registry import family, get_spec
from utils.errors import UserError
from utils.evaluation.inputs import Encoded, Experiment, needs_train
from utils.evaluation.options import EvalOptions
from utils.evaluation.pipeline import Evaluation, encode, measure, score
from utils.features.images import DEFAULT_VIEW
from utils.features.store import CachedFeatures
from utils.scores import SCORES

METRIC = "AUROC"  # the mean over the OOD validation sets, higher is better
# --select names -> the EvalOptions field (a score's input of the same name) and its type
GRID_NAMES = {"t": "temperature", "temperature": "temperature", "k": "k", "lambda": "gl_lambda",
              "gl_lambda": "gl_lambda", "groups": "neg_groups", "neg_groups": "neg_groups"}  # fmt: skip
CASTS = {"temperature": float, "gl_lambda": float, "k": int, "neg_groups": int}


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`T=0.5,1,2 k=10,50` -> {"temperature": [0.5, 1.0, 2.0], "k": [10, 50]}, values in the order given."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        key = GRID_NAMES.get(name.strip().lower())
        if not sep or key is None:
            raise UserError(f"--select takes NAME=V1,V2,... with NAME one of {', '.join(GRID_NAMES)}; got '{item}'")
        try:
            parsed = [CASTS[key](v) for v in values.split(",") if v.strip()]
        except ValueError as err:
            raise UserError(f"--select {item}: {key} takes {CASTS[key].__name__} values ({err})") from err
        if not parsed or any(not np.isfinite(v) or v <= 0 for v in parsed):
            raise UserError(f"--select {item}: give one or more positive values")
        if key in grid:
            raise UserError(f"--select names {key} twice")
        grid[key] = list(dict.fromkeys(parsed))
    return grid


@dataclass
class Validation:
    """The data a choice is made on, and how it was made (for results.json)."""

    id_val: LoadedDataset
    ood_val: list[LoadedDataset]
    split: str
    fit_rows: np.ndarray | None = None  # train positions the scores fit on while choosing (None: all of train)


def named_split(item: str) -> tuple[str, str]:
    """`NAME[=SPLIT]` of --select-ood: a set's val split where it has one, else its test split."""
    name, _, split = item.partition("=")
    return name, split or ("val" if "val" in get_spec(name).splits else "test")


def validation_data(id_name: str, data: DataOptions, ood: Sequence[str], holdout: float,
                    test_sets: Sequence[LoadedDataset], resize: int | None = None) -> Validation:  # fmt: skip
    """ID and OOD validation sets: OpenOOD's lists for an openood_* benchmark (unless `ood` names others), else a
    `holdout` share of the ID train split against the named `ood` sets, brought to `resize` as the test OOD sets
    are (the ID benchmark's protocol); a test set is refused as validation data."""
    bench = openood.BENCHMARKS.get(id_name)
    if ood:
        ood_val = [data.load(*named_split(item), resize=resize) for item in ood]
    elif bench is not None:
        ood_val = [data.load(openood.ood_name(id_name, bench.val_ood), "val")]
    else:
        raise UserError(f"--select needs OOD validation data for '{id_name}': name one or more sets with "
                        f"--select-ood NAME[=SPLIT] (never a test set; e.g. digits_aux for digits)")  # fmt: skip
    _refuse_test_sets(ood_val, test_sets)
    if "val" in get_spec(id_name).splits:
        return Validation(data.load(id_name, "val"), ood_val, f"{id_name} val split vs "
                          f"{', '.join(f'{d.name} ({d.split})' for d in ood_val)}")  # fmt: skip
    if "train" not in get_spec(id_name).splits:
        raise UserError(f"--select holds out part of the ID train split, and '{id_name}' has none")
    if not 0 < holdout < 1:
        raise UserError(f"--select-holdout must lie strictly between 0 and 1, got {holdout}")
    train = data.load_id_train(id_name)
    count = len(train.dataset)
    held = _held_out(train, holdout, data.seed)
    subset = Subset(train.dataset, held.tolist())
    id_val = replace(train, dataset=subset, identity=f"{id_name}|train|{dataset_identity(subset)}")
    return Validation(id_val, ood_val, f"{id_name} train, {len(held)} of {count} held out (seed {data.seed}) vs "
                      f"{', '.join(f'{d.name} ({d.split})' for d in ood_val)}",
                      fit_rows=np.setdiff1d(np.arange(count), held))  # fmt: skip


def _refuse_test_sets(ood_val: Sequence[LoadedDataset], test_sets: Sequence[LoadedDataset]) -> None:
    """A validation set may not be a test set (same name and split: a capped or resized copy still is), nor share a
    source with one under another name (cifar100 and openood_cifar10:cifar100), whose splits we cannot compare."""
    for data in ood_val:
        for test in test_sets:
            same = (data.name, data.split) == (test.name, test.split)
            if same or (data.name != test.name and family(data.name) == family(test.name)):
                why = "is" if same else f"holds images from the same source ({family(data.name)}) as"
                raise UserError(f"--select-ood {data.name} ({data.split}) {why} the test set {test.name} "
                                f"({test.split}): choosing on it would tune on the test")  # fmt: skip


def _held_out(train: LoadedDataset, share: float, seed: int) -> np.ndarray:
    """Sorted train positions held out: `share` of each class (seeded), each class keeping at least one image to
    fit on (a few-shot split stays whole per class); unlabelled train sets are drawn from as one."""
    try:
        labels = labels_of(train.dataset)
    except UserError:
        labels = np.zeros(len(train.dataset), dtype=np.int64)
    rng, held = np.random.default_rng(seed), []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        held += members[rng.permutation(len(members))[: min(round(share * len(members)), len(members) - 1)]].tolist()
    if not held:
        raise UserError(
            f"--select-holdout {share} of {train.name}'s train split holds out no image (classes of "
            f"{np.bincount(np.unique(labels, return_inverse=True)[1]).max()} images at most)"
        )
    return np.sort(np.asarray(held, dtype=np.int64))


def check_grid(grid: dict[str, list], val: Validation, train: LoadedDataset | None) -> None:
    """Settings the data cannot serve fail before any image is encoded: a k beyond what scores fit on."""
    if "k" not in grid or train is None:
        return
    fit = len(val.fit_rows) if val.fit_rows is not None else len(train.dataset)
    if max(grid["k"]) > fit:
        raise UserError(f"--select k={max(grid['k'])} needs at least that many training images; while choosing, "
                        f"scores fit on {fit} of {train.name}'s train images"
                        f"{' (the rest is held out)' if val.fit_rows is not None else ''}")  # fmt: skip


def _rows(features: CachedFeatures, positions: np.ndarray) -> CachedFeatures:
    keep = np.isin(features.index, positions)
    return CachedFeatures(features.features[keep], features.labels[keep], features.index[keep], features.meta)


def _fitting_on(exp: Experiment, val: Validation) -> Experiment:
    """The run's experiment on the validation data: no test set in it."""
    train = exp.id_train
    if train is not None and val.fit_rows is not None:
        subset = Subset(train.dataset, val.fit_rows.tolist())
        train = replace(train, dataset=subset, identity=f"{train.identity}|fit{len(val.fit_rows)}")
    return replace(exp, id_test=val.id_val, id_train=train, ood_sets=list(val.ood_val), notes=[], artifacts={})


def encode_validation(exp: Experiment, val: Validation, scores: Sequence[str]) -> Encoded:
    """Features of the validation sets (and of the whole ID train split, through the cache, cut to the rows scores
    fit on while choosing). A held-out slice is cut from the train features too when the scores need train
    features and only the global view, so no image is encoded twice. Under torchrun every rank must call this."""
    base = replace(_fitting_on(exp, val), id_train=exp.id_train)
    sliced = (val.fit_rows is not None and needs_train(scores, exp.options)
              and {SCORES[s].view for s in scores} == {DEFAULT_VIEW})  # fmt: skip
    encoded = encode(replace(base, id_test=exp.id_train) if sliced else base, scores)
    if sliced:
        held = np.asarray(val.id_val.dataset.indices, dtype=np.int64)
        encoded.id_test = {view: _rows(features, held) for view, features in encoded.id_test.items()}
    if encoded.id_train is not None and val.fit_rows is not None:
        encoded.id_train = _rows(encoded.id_train, val.fit_rows)
    return encoded


@dataclass
class Choice:
    """One score's grid, the mean validation AUROC of each setting, and the setting chosen."""

    grid: dict[str, list]
    tried: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)

    def summary(self, split: str) -> dict[str, Any]:
        return {"grid": self.grid, "chosen": self.chosen, "metric": f"mean {METRIC} over the OOD validation sets",
                "tried": [{**setting, METRIC: value} for setting, value in self.tried], "split": split}  # fmt: skip


def _with(options: EvalOptions, setting: dict[str, Any]) -> EvalOptions:
    return replace(options, **{k: [v] if k == "k" else v for k, v in setting.items()})


def choose(exp: Experiment, val: Validation, encoded: Encoded, scores: Sequence[str], grid: dict[str, list],
           ) -> dict[str, Choice]:  # fmt: skip
    """Each score's best setting of the grid arguments it takes (ties: the first in grid order); a sweep argument
    (KNN's k) is scored in one pass."""
    base, choices = _fitting_on(exp, val), {}
    for name in scores:
        cls = SCORES[name]
        own = {k: v for k, v in grid.items() if k in cls.inputs}
        if not own:
            continue
        swept = own.pop(cls.sweep_over, None) if cls.sweep_over else None
        choice = Choice({**own, **({cls.sweep_over: swept} if swept else {})})
        for values in itertools.product(*own.values()):
            setting = dict(zip(own, values, strict=True))
            options = _with(base.options, setting)
            if swept:
                options = replace(options, k=list(swept))
            result = measure(score(replace(base, options=options), encoded, [name]))
            for label, per_set in result.metrics.items():
                value = float(np.mean([metrics[METRIC] for metrics in per_set.values()]))
                extra = {cls.sweep_over: int(label.rpartition("@")[2])} if swept else {}
                choice.tried.append(({**setting, **extra}, value))
        order = {k: {v: i for i, v in enumerate(values)} for k, values in choice.grid.items()}
        choice.tried.sort(key=lambda item: tuple(order[k][item[0][k]] for k in choice.grid))  # the grid's order
        choice.chosen = max(choice.tried, key=lambda item: item[1])[0]  # max keeps the first of equals
        choices[name] = choice
    return choices


def score_chosen(exp: Experiment, encoded: Encoded, scores: Sequence[str], choices: dict[str, Choice]) -> Evaluation:
    """The test scores, each score under its chosen setting (the run's options for what it did not choose)."""
    together: dict[tuple, list[str]] = {}  # scores under one setting are scored in one call: shared fits (the
    for name in scores:  # probe of lp_*, the Gaussians of maha and rmd) are made once
        setting = choices[name].chosen if name in choices else {}
        together.setdefault(tuple(setting.items()), []).append(name)
    merged = Evaluation(exp.id_test.name)
    for setting, names in together.items():
        part = score(replace(exp, options=_with(exp.options, dict(setting))), encoded, names)
        merged.scores.update(part.scores)
        merged.accuracy.update(part.accuracy)
        merged.samples = part.samples
        merged.notes += [note for note in part.notes if note not in merged.notes]
        merged.artifacts.update(part.artifacts)
    position = {name: k for k, name in enumerate(scores)}  # rows in the run's score order, as without --select
    merged.scores = dict(sorted(merged.scores.items(), key=lambda item: position[item[0].split("@")[0]]))
    options = exp.options
    return measure(merged, options.bootstrap, options.seed, options.extra_metrics)

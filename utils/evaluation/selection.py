"""Settings chosen on validation data (--select), before any test set is encoded.

Each score's grid of the settings it reads is scored on ID validation images against OOD validation sets
(utils/data/validation.py); the best mean AUROC is kept (OpenOOD's APS criterion), and only then are the test sets
encoded and scored. The grid's names and value types come from the settings' declarations.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch.utils.data import Subset

from utils.data.splits import LoadedDataset
from utils.data.validation import Validation
from utils.errors import UserError
from utils.evaluation.inputs import Encoded, Experiment, needs_train, score_settings, settings_read
from utils.evaluation.options import EvalOptions
from utils.evaluation.pipeline import Evaluation, encode, measure, score
from utils.features.images import DEFAULT_VIEW
from utils.features.store import CachedFeatures
from utils.scores import SCORES, K

METRIC = "AUROC"  # the mean over the OOD validation sets, higher is better


def grid_names() -> dict[str, str]:
    """--select names (lower case) -> the setting: each selectable setting's own name and its short names."""
    return {alias.lower(): name for name, (setting, _) in score_settings().items() if setting.select
            for alias in (*setting.select, name)}  # fmt: skip


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`T=0.5,1,2 k=10,50` -> {"temperature": [0.5, 1.0, 2.0], "k": [10, 50]}, values in the order given, each
    checked as the setting's flag checks it."""
    names, grid, declared = grid_names(), {}, score_settings()
    for item in items:
        name, sep, values = item.partition("=")
        key = names.get(name.strip().lower())
        if not sep or key is None:
            raise UserError(f"--select takes NAME=V1,V2,... with NAME one of {', '.join(names)}; got '{item}'")
        try:
            parsed = [declared[key][0].parse(v) for v in values.split(",") if v.strip()]
        except ValueError as err:
            raise UserError(f"--select {item}: {err}") from err
        if not parsed:
            raise UserError(f"--select {item}: give one or more values")
        if key in grid:
            raise UserError(f"--select names {key} twice")
        grid[key] = list(dict.fromkeys(parsed))
    return grid


def read_by(scores: Sequence[str]) -> set[str]:
    """The names of the settings that any of `scores` reads."""
    return {setting.name for name in scores for setting in settings_read(name)}


def check_grid(grid: dict[str, list], val: Validation, train: LoadedDataset | None) -> None:
    """Settings the data cannot serve fail before any image is encoded: a k beyond what scores fit on."""
    if K.name not in grid or train is None:
        return
    fit = len(val.fit_rows) if val.fit_rows is not None else len(train.dataset)
    if max(grid[K.name]) > fit:
        raise UserError(f"--select k={max(grid[K.name])} needs at least that many training images; while choosing, "
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
    """The options with one grid point: a setting that takes several values gets a list of one."""
    declared = score_settings()
    return options.with_settings({k: [v] if declared[k][0].nargs else v for k, v in setting.items()})


def choose(exp: Experiment, val: Validation, encoded: Encoded, scores: Sequence[str], grid: dict[str, list],
           ) -> dict[str, Choice]:  # fmt: skip
    """Each score's best setting of the grid arguments it takes (ties: the first in grid order); a sweep argument
    (KNN's k) is scored in one pass."""
    base, choices = _fitting_on(exp, val), {}
    for name in scores:
        cls, reads = SCORES[name], read_by([name])
        own = {k: v for k, v in grid.items() if k in reads}
        if not own:
            continue
        swept = own.pop(cls.sweep_over, None) if cls.sweep_over else None
        choice = Choice({**own, **({cls.sweep_over: swept} if swept else {})})
        for values in itertools.product(*own.values()):
            setting = dict(zip(own, values, strict=True))
            options = _with(base.options, setting)
            if swept:
                options = options.with_settings({cls.sweep_over: list(swept)})
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
        merged.ran.update(part.ran)
        merged.samples = part.samples
        merged.notes += [note for note in part.notes if note not in merged.notes]
        merged.artifacts.update(part.artifacts)
    position = {name: k for k, name in enumerate(scores)}  # rows in the run's score order, as without --select
    merged.scores = dict(sorted(merged.scores.items(), key=lambda item: position[item[0].split("@")[0]]))
    options = exp.options
    return measure(merged, options.bootstrap, options.seed, options.extra_metrics)

"""Results in OpenOOD v1.5's CSV layout, by OpenOOD's metric definitions, for leaderboard submissions.

OpenOOD's evaluator (openood/evaluation_api/evaluator.py, openood/evaluators/metrics.py) writes one table per
method: rows near sets, `nearood`, far sets, `farood` (unweighted means), columns FPR@95, AUROC, AUPR_IN,
AUPR_OUT, ACC, all x 100. FPR@95 treats OOD as positive and reads scikit-learn's roc_curve, which drops collinear
points (our FPR95_OPENOOD; FPR95_OOD reads the first point at 95% OOD recall), the AUPRs are trapezoid areas
(scikit-learn's precision_recall_curve and auc), and ACC is the ID top-1 of the model's classifier, the same on
every row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from utils.atomic import atomic_path
from utils.data.openood import short_name
from utils.evaluation.metrics import aupr_trapezoid, auroc, fpr_openood
from utils.evaluation.pipeline import Evaluation
from utils.evaluation.report import file_stem, with_group_means
from utils.scores import SCORES

COLUMNS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC")
FOLDER = "openood"


def openood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """OpenOOD's four OOD metrics as fractions (`id_scores` higher = more ID, as everywhere here)."""
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    return {
        "FPR@95": fpr_openood(-ood_scores, -id_scores),  # our FPR95_OPENOOD
        "AUROC": auroc(id_scores, ood_scores),
        "AUPR_IN": aupr_trapezoid(id_scores, ood_scores),
        "AUPR_OUT": aupr_trapezoid(-ood_scores, -id_scores),
    }


def accuracy_of(score: str, accuracy: dict[str, float]) -> float | None:
    """The ACC column: the top-1 of the score's own classifier (lp_*: the probe), else of CLIP's zero-shot one."""
    cls = SCORES.get(score.split("@")[0])
    kind = getattr(cls, "classifier", None) or "zero_shot"
    return accuracy.get(f"{kind}_top1")


def openood_rows(evaluation: Evaluation, score: str) -> list[tuple[str, list[float | None]]]:
    """(row name, [FPR@95, AUROC, AUPR_IN, AUPR_OUT, ACC] x 100) in OpenOOD's order; only complete groups get
    their mean row, and sets in no group follow."""
    per_set = {name: openood_metrics(*pair) for name, pair in evaluation.scores[score].items()}
    acc = accuracy_of(score, evaluation.accuracy)
    return [(short_name(name), [100 * values[m] for m in COLUMNS[:4]] + [None if acc is None else 100 * acc])
            for name, values in with_group_means(per_set, evaluation.groups)]  # fmt: skip


def openood_csv(evaluation: Evaluation, score: str) -> str:
    """One score's table as OpenOOD's pandas DataFrame.to_csv writes it: an unnamed index column first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["", *COLUMNS])
    for name, values in openood_rows(evaluation, score):
        writer.writerow([name, *("" if v is None else repr(float(v)) for v in values)])
    return buffer.getvalue()


def write_openood(folder: Path, evaluation: Evaluation) -> list[Path]:
    """openood/<score>.csv for every score of the run, each written atomically; returns their paths."""
    written = []
    for score in evaluation.scores:
        path = folder / FOLDER / f"{file_stem(score)}.csv"
        with atomic_path(path) as tmp:
            tmp.write_text(openood_csv(evaluation, score))
        written.append(path)
    return written

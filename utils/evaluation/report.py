"""Result files of an evaluation run: results.json / .csv / .md, per-image scores, plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.atomic import atomic_path, write_json
from utils.evaluation.metrics import METRICS
from utils.evaluation.pipeline import Evaluation
from utils.plots import save_figure
from utils.plots.ood import roc_curves, score_histograms

AVERAGE = "average"
# What a run writes into its folder (write_results, write_openood): an --overwrite run removes these first.
OWNED = ("results.json", "results.csv", "results.md", "scores.npz", "hist_*.png", "roc_*.png", "*_words.txt",
         "openood")  # fmt: skip


Entries = list[tuple[str, dict[str, float]]]


def _mean(entries: Entries) -> dict[str, float]:
    return {m: float(np.mean([values[m] for _, values in entries])) for m in entries[0][1]}


def with_group_means(per_set: dict[str, dict[str, float]], groups: dict[str, tuple[str, ...]]) -> Entries:
    """Each group's sets then its unweighted mean row (OpenOOD: near sets, nearood, far sets, farood), then the sets
    in no group; a group with a set missing from `per_set` gets no mean row (it would not be the benchmark's)."""
    entries: Entries = []
    for group, members in groups.items():
        present = [(name, per_set[name]) for name in members if name in per_set]
        entries += present
        if len(present) == len(members):
            entries.append((group, _mean(present)))
    grouped = {name for members in groups.values() for name in members}
    return entries + [(name, values) for name, values in per_set.items() if name not in grouped]


def table_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One row per score x OOD set, each group's mean row (`evaluation.groups`) and a per-score average over the
    sets; metrics x 100, rounded to two decimals. A set the run or a score could not score gets a row saying why
    (a `note` column), and an average over fewer than all the sets says so."""
    sets = list(dict.fromkeys([*(n for n in evaluation.samples if n != "ID"), *evaluation.skipped]))
    rows = []
    for score, per_set in evaluation.metrics.items():
        entries = with_group_means(per_set, evaluation.groups)
        if len(per_set) > 1:
            entries.append((AVERAGE, _mean(list(per_set.items()))))
        missing = [name for name in sets if name not in per_set]
        for ood, values in entries:
            if ood == AVERAGE:  # the sets not scored come before it
                rows += [{"score": score, "ood": name, "note": _why(evaluation, name)} for name in missing]
                missing = []
            row: dict[str, Any] = {"score": score, "ood": ood}
            row.update({m: round(100 * v, 2) for m, v in values.items()})
            for m, (low, high) in evaluation.intervals.get(score, {}).get(ood, {}).items():
                row[f"{m}_ci"] = f"{100 * low:.2f}-{100 * high:.2f}"
            if ood == AVERAGE and len(per_set) < len(sets):
                row["note"] = f"mean of {len(per_set)} of the {len(sets)} sets"
            rows.append(row)
        rows += [{"score": score, "ood": name, "note": _why(evaluation, name)} for name in missing]
    return rows


def _why(evaluation: Evaluation, name: str) -> str:
    if name in evaluation.skipped:  # its first clause (the notes and results.json's `skipped` have all of it)
        return f"skipped: {evaluation.skipped[name].split(': ')[0]}"
    return "not scored (see the notes)"


def file_stem(score: str) -> str:
    """A score's label as a file name: knn@50 -> knn_k50, pood:vim -> pood_vim (Windows-safe)."""
    return score.replace("@", "_k").replace(":", "_")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of any row, in first-seen order (average rows have no confidence intervals)."""
    return list(dict.fromkeys(k for row in rows for k in row)) if rows else ["score", "ood", *METRICS]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A table to paste: FPR95 and FPR95_OOD lower is better, the AU* metrics higher."""
    columns = _columns(rows)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("score", "ood", "note") else "---:" for c in columns) + "|",
    ]
    for row in rows:
        cells = (f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_results(folder: Path, evaluation: Evaluation, metadata: dict[str, Any], plots: bool = True,
                  rows: list[dict[str, Any]] | None = None) -> list[Path]:  # fmt: skip
    """Every output file of a run, each written atomically (`rows`: the table, if extended); returns their paths."""
    rows = rows if rows is not None else table_rows(evaluation)
    written = [folder / "results.json", folder / "results.csv", folder / "results.md", folder / "scores.npz"]
    write_json(written[0], {
        "id": evaluation.id_name,
        "metrics": evaluation.metrics,
        "intervals": evaluation.intervals,
        "accuracy": evaluation.accuracy,
        "samples": evaluation.samples,
        "notes": evaluation.notes,
        "groups": evaluation.groups,
        "skipped": evaluation.skipped,
        "ran": evaluation.ran,
        **metadata,
    })  # fmt: skip
    _write_text(written[1], _csv_text(rows))
    _write_text(written[2], markdown_table(rows) + "\n")
    arrays = {}
    for score, per_set in evaluation.scores.items():
        for name, (id_scores, ood_scores) in per_set.items():
            arrays[f"{score}/{name}/id"], arrays[f"{score}/{name}/ood"] = id_scores, ood_scores
    with atomic_path(written[3]) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    for name, lines in evaluation.artifacts.items():
        written.append(folder / f"{name}.txt")
        _write_text(written[-1], "\n".join(lines) + "\n")
    if plots:
        for score, per_set in tqdm(evaluation.scores.items(), desc="figures", unit="score", dynamic_ncols=True,
                                   disable=len(evaluation.scores) < 4):  # fmt: skip
            safe = file_stem(score)
            save_figure(score_histograms(per_set, f"{score}: {evaluation.id_name} vs OOD"), folder / f"hist_{safe}.png")
            save_figure(roc_curves(per_set, f"{score}: {evaluation.id_name} (ID positive)"), folder / f"roc_{safe}.png")
            written += [folder / f"hist_{safe}.png", folder / f"roc_{safe}.png"]
    return written

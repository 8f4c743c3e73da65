"""Result tables for the console and for pasting into papers."""

from __future__ import annotations

METRIC_COLUMNS = ("FPR95", "AUROC")  # FPR95 lower is better, AUROC higher is better


def ood_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table, one row per score x OOD set plus a per-score average, metrics x 100."""
    lines = ["| score | OOD set | " + " | ".join(METRIC_COLUMNS) + " |", "|---|---|" + "---:|" * len(METRIC_COLUMNS)]
    for score, per_set in results.items():
        rows = list(per_set.items())
        if len(rows) > 1:
            rows.append(("average", {m: sum(r[m] for _, r in rows) / len(rows) for m in METRIC_COLUMNS}))
        for ood, metrics in rows:
            lines.append(f"| {score} | {ood} | " + " | ".join(f"{100 * metrics[m]:.2f}" for m in METRIC_COLUMNS) + " |")
    return "\n".join(lines)

"""Collect the offline digits experiment's results into one summary.json (called by `make demo`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from utils.atomic import write_json


def summarise(out: Path) -> dict:
    """{"zero_shot_top1": float, "linear_probe_top1": float, "ood": {score: {ood_set: metrics}}}, fractions."""
    evaluation = json.loads((out / "eval" / "results.json").read_text())
    zeroshot = json.loads((out / "zeroshot" / "results.json").read_text())
    probe = json.loads((out / "linear_probe" / "results.json").read_text())
    summary = {
        "zero_shot_top1": zeroshot["top1"],
        "zero_shot_top5": zeroshot["top5"],
        "linear_probe_top1": probe["accuracy"],
        "ood": evaluation["metrics"],
        "training": [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()],
    }
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:])[0])
    summary = summarise(out)
    mcm = summary["ood"]["mcm"]["digits_ood"]
    print(f"digits demo: zero-shot top-1 {100 * summary['zero_shot_top1']:.2f}%, MCM vs digits 7-9 AUROC "
          f"{100 * mcm['AUROC']:.2f} / FPR95 {100 * mcm['FPR95']:.2f}; {out / 'summary.json'}")  # fmt: skip


if __name__ == "__main__":
    main()

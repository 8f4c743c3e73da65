"""The offline digits experiment's driver: its summary.json (`make demo`) and the methods x seeds table."""

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
    argv = argv or sys.argv[1:]
    if argv[0] == "table":  # python -m tools.demo table OUT [SEEDS...] [--methods NAME...]
        cut = argv.index("--methods") if "--methods" in argv else len(argv)
        seeds = [int(s) for s in argv[2:cut]] or [0, 1, 2]
        print(methods_table(Path(argv[1]), seeds, methods=argv[cut + 1 :] or None))
        return
    out = Path(argv[0])
    summary = summarise(out)
    mcm = summary["ood"]["mcm"]["digits_ood"]
    print(f"digits demo: zero-shot top-1 {100 * summary['zero_shot_top1']:.2f}%, MCM vs digits 7-9 AUROC "
          f"{100 * mcm['AUROC']:.2f} / FPR95 {100 * mcm['FPR95']:.2f}; {out / 'summary.json'}")  # fmt: skip


TABLE_SCORES = ["mcm", "gl_mcm", "energy", "knn", "maha"]  # and each method's own score, where its checkpoint has one
# Prompt learning starts from a pre-trained CLIP: the same seed's contrastive model, frozen, with 16 shots per class
# and the papers' training settings (the method's defaults).
PROMPT_LEARNING = {"coop", "locoop", "negprompt", "idlike"}


def _train_args(method: str, out: Path, seed: int, epochs: int) -> list[str]:
    if method in PROMPT_LEARNING:
        return ["--ckpt", str(out / f"contrastive-seed{seed}" / "final.pt"), "--shots", "16"]
    return ["--epochs", str(epochs), "--batch-size", "64", "--lr", "3e-4", "--weight-decay", "0", "--templates",
            "single"]  # fmt: skip


def methods_table(out: Path, seeds: list[int], epochs: int = 30, methods: list[str] | None = None) -> str:
    """The fine-tuning methods x seeds on digits: mean ± std of AUROC and FPR95 per score and OOD set.

    A run whose results.json files exist is read back, so an interrupted table resumes where it stopped. Prompt
    learning needs the contrastive model of its seed, so "contrastive" runs first.
    """
    import numpy as np

    import eval_ood_detection
    import finetune_clip
    from utils.evaluation.inputs import enabled_by
    from utils.models.checkpoint import read_checkpoint
    from utils.training.methods import METHODS

    rows: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    accuracy: dict[str, list[float]] = {}
    tiny = ["--model", "tiny", "--pretrained", "none", "--workers", "0", "--cache-dir", str(out / "cache")]
    methods = methods or list(METHODS)
    if PROMPT_LEARNING & set(methods):
        methods = ["contrastive", *[m for m in methods if m != "contrastive"]]
    for method in methods:
        for seed in seeds:
            run = out / f"{method}-seed{seed}"
            train = ["--in", "digits", "--method", method, *tiny, "--seed", str(seed), *_train_args(method, out, seed,
                     epochs)]  # fmt: skip
            if (run / "results.json").exists() and (run / "eval" / "results.json").exists():  # finished earlier
                summary = json.loads((run / "results.json").read_text())
                result = json.loads((run / "eval" / "results.json").read_text())
            else:
                summary = finetune_clip.main([*train, "--out-dir", str(run), "--overwrite"])
                own = enabled_by(read_checkpoint(str(run / "final.pt")).contract)
                result = eval_ood_detection.main(["--in", "digits", *tiny, "--seed", str(seed), "--ckpt",
                                                  str(run / "final.pt"), "--score", *TABLE_SCORES, *own, "--no-plots",
                                                  "--out-dir", str(run / "eval"), "--overwrite"])  # fmt: skip
            accuracy.setdefault(method, []).append(summary["zero_shot_top1"])
            for score, per_set in result["metrics"].items():
                for ood, metrics in per_set.items():
                    cell = rows.setdefault((method, score, ood), {"AUROC": [], "FPR95": []})
                    cell["AUROC"].append(metrics["AUROC"])
                    cell["FPR95"].append(metrics["FPR95"])

    def fmt(values: list[float]) -> str:
        return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"

    lines = ["| method | ID zero-shot top-1 | score | OOD set | AUROC ↑ | FPR95 ↓ |", "|---|---:|---|---|---:|---:|"]
    for (method, score, ood), cell in rows.items():
        lines.append(f"| {method} | {fmt(accuracy[method])} | {score} | {ood} | {fmt(cell['AUROC'])} | "
                     f"{fmt(cell['FPR95'])} |")  # fmt: skip
    table = "\n".join(lines)
    (out / "methods_table.md").write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()

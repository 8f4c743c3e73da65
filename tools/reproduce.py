"""Every paper preset whose data and weights are here, in one process: one table of ours beside the published numbers.

    python -m tools.reproduce                                       # every preset
    python -m tools.reproduce --preset mcm-imagenet glmcm-imagenet --data-root /data --device cuda
    make reproduce ARGS="--data-root /data"

Writes reproduction.md, reproduction.json and reproduction.png into --out-dir, and each preset's own results
folder below it. Any other flag goes to every preset's eval_ood_detection.py run (--device, --batch-size,
--workers, --cache-dir, --model, ...); a flag that a preset fixes is refused. A preset whose dataset or weights
are not on this machine is skipped with what is missing and where to get it (nothing is downloaded unless
--download). The presets share one feature cache, so an interrupted reproduction resumes from it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import eval_ood_detection
from utils.atomic import atomic_path, write_json
from utils.cli import given_arguments, option_strings
from utils.errors import Missing, UserError
from utils.evaluation.presets import Preset, comparable, list_presets, load_preset

OWN = {"preset", "out_dir", "overwrite", "data_root", "download", "plots"}  # set here for every preset run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", default=None, choices=list_presets(), metavar="NAME",
                        help=f"the presets to run (default: all: {', '.join(list_presets())})")  # fmt: skip
    parser.add_argument("--data-root", default="./data", help="folder holding the datasets (default: ./data)")
    parser.add_argument("--out-dir", default="results/reproduction",
                        help="where the tables and each preset's results go; rewritten by each reproduction "
                             "(default: results/reproduction)")  # fmt: skip
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download the sets it can (default: only what is on disk is used)",
    )
    parser.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="each preset's histogram and ROC figures (default: off)",
    )
    return parser


def passed_on(rest: Sequence[str], presets: Sequence[Preset]) -> list[str]:
    """The flags for every preset's run, checked now: each one eval_ood_detection.py knows, none that a preset fixes
    or that this tool sets itself."""
    parser = eval_ood_detection.build_parser()
    _, unknown = parser.parse_known_args(list(rest))
    if unknown:
        raise UserError(f"eval_ood_detection.py does not know {' '.join(unknown)}")
    flags, given = option_strings(parser), given_arguments(parser, list(rest))
    if own := sorted(given & OWN):
        raise UserError(f"{', '.join(flags.get(d, d) for d in own)}: set by this tool's own flags, not passed on")
    for preset in presets:
        if fixed := sorted(given & set(preset.settings)):
            raise UserError(f"{', '.join(flags[d] for d in fixed)}: fixed by preset {preset.name}, which would refuse "
                            f"the run; leave it out")  # fmt: skip
    return list(rest)


def run_preset(preset: Preset, rest: Sequence[str], out_dir: Path, data_root: str, download: bool,
               plots: bool) -> dict[str, Any]:  # fmt: skip
    """One preset through eval_ood_detection.py: its rows with the published numbers, or why it did not run."""
    argv = ["--preset", preset.name, "--data-root", data_root, "--out-dir", str(out_dir / preset.name),
            "--overwrite", "--download" if download else "--no-download", "--plots" if plots else "--no-plots",
            *rest]  # fmt: skip
    parser = eval_ood_detection.build_parser()
    args = parser.parse_args(argv)
    args.given = sorted(given_arguments(parser, argv))
    record: dict[str, Any] = {"paper": preset.paper, "table": preset.table, "argv": argv}
    print(f"\n=== {preset.name}: {preset.paper}", flush=True)
    try:
        result = eval_ood_detection.run(args)
    except Missing as err:
        print(f"skipped {preset.name}: {_cell(str(err))}", file=sys.stderr)
        return {**record, "status": "skipped", "reason": str(err)}
    except UserError as err:
        print(f"failed {preset.name}: {_cell(str(err))}", file=sys.stderr)
        return {**record, "status": "failed", "reason": str(err)}
    reason = comparable(preset, vars(args))
    return {**record, "status": "ran", "comparable": reason is None, "reason": reason, "out_dir": result["out_dir"],
            "rows": long_rows(result["rows"], preset), "notes": result["notes"]}  # fmt: skip


def long_rows(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """One row per score x OOD set x metric: ours, the published number and ours − published. With published
    numbers, the metrics they give; without, AUROC and the FPR the preset's paper uses."""
    shown = sorted({m for per_set in preset.published.values() for values in per_set.values() for m in values})
    shown = shown or ["AUROC", _fpr(preset)]
    out = []
    for row in rows:
        for metric in shown:
            if metric in row or f"{metric}_published" in row:
                out.append({"score": row["score"], "ood": row["ood"], "metric": metric, "ours": row.get(metric),
                            "published": row.get(f"{metric}_published"), "diff": row.get(f"{metric}_diff"),
                            "note": row.get("note")})  # fmt: skip
    return out


def _fpr(preset: Preset) -> str:
    extra = preset.settings.get("extra_metrics", [])
    return next((m for m in extra if m.startswith("FPR95")), "FPR95")


def markdown(report: dict[str, dict[str, Any]]) -> str:
    statuses = [r["status"] for r in report.values()]
    lines = ["# Reproduction", "",
             f"{len(report)} presets: {statuses.count('ran')} ran "
             f"({sum(bool(r.get('comparable')) for r in report.values())} comparable with the published numbers), "
             f"{statuses.count('skipped')} skipped (data or weights missing), {statuses.count('failed')} failed.", "",
             "| preset | paper | table | status |", "|---|---|---|---|"]  # fmt: skip
    for name, r in report.items():
        lines.append(f"| {name} | {_cell(r['paper'])} | {_cell(r['table'])} | {_cell(_status(r))} |")
    for name, r in report.items():
        if r["status"] != "ran":
            continue
        lines += ["", f"## {name}", "", "| score | OOD set | metric | ours | published | ours − published |",
                  "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for row in r["rows"]:
            lines.append(f"| {row['score']} | {row['ood']} | {row['metric']} | {_number(row['ours'], row['note'])} | "
                         f"{_number(row['published'])} | {_number(row['diff'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _status(record: dict[str, Any]) -> str:
    if record["status"] != "ran":
        return f"{record['status']}: {record['reason']}"
    return "ran, comparable" if record["comparable"] else f"ran, not comparable: {record['reason']}"


def _cell(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines()).replace("|", "\\|")


def _number(value: Any, note: str | None = None) -> str:
    return f"{value:.2f}" if isinstance(value, float | int) else (_cell(note) if note else "—")


def figure(report: dict[str, dict[str, Any]], path: Path) -> None:
    """Ours against published, one panel per kind of metric; comparable runs filled, others hollow."""
    from utils.plots import save_figure
    from utils.plots.reproduction import ours_against_published

    points = [(row["metric"], row["published"], row["ours"], bool(r["comparable"]), name)
              for name, r in report.items() if r["status"] == "ran" for row in r["rows"]
              if isinstance(row["published"], float | int) and isinstance(row["ours"], float | int)]  # fmt: skip
    save_figure(ours_against_published(points), path)


def reproduce(args: argparse.Namespace, rest: Sequence[str]) -> dict[str, dict[str, Any]]:
    presets = [load_preset(name) for name in args.preset or list_presets()]
    rest = passed_on(rest, presets)
    out_dir = Path(args.out_dir)
    report = {p.name: run_preset(p, rest, out_dir, args.data_root, args.download, args.plots) for p in presets}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "reproduction.json", {"presets": report, "argv": sys.argv})
    with atomic_path(out_dir / "reproduction.md") as tmp:
        Path(tmp).write_text(markdown(report))
    figure(report, out_dir / "reproduction.png")
    print(f"\n{markdown(report).split(chr(10), 3)[2]}\nsaved reproduction.md, reproduction.json, reproduction.png in "
          f"{out_dir}")  # fmt: skip
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args, rest = build_parser().parse_known_args(argv)
    try:
        report = reproduce(args, rest)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if failed := [name for name, r in report.items() if r["status"] == "failed"]:
        print(f"error: {', '.join(failed)} failed (see above and reproduction.md)", file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()

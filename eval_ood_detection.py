"""OOD detection with CLIP: encode ID and OOD test sets once, score them, report AUROC and FPR95.

python eval_ood_detection.py --in cifar10 --score MCM
python eval_ood_detection.py --in digits --score MCM --model tiny --pretrained none
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from utils.atomic import write_json
from utils.cache import FeatureCache
from utils.cli import add_data_args, add_model_args, guarded, run_folder, run_metadata
from utils.data import get_spec, load_dataset
from utils.device import resolve_device
from utils.errors import UserError
from utils.models import load_clip
from utils.ood_eval import DataOptions, evaluate, resolve_ood_sets
from utils.prompts import TEMPLATE_SETS, load_templates
from utils.report import ood_table
from utils.scores import SCORES, resolve_scores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--in",
        dest="id_name",
        default="cifar10",
        help="ID dataset: a registry name (cifar10, imagenet, digits, ...) or folder:PATH (default: cifar10)",
    )
    parser.add_argument(
        "--out",
        nargs="+",
        default=None,
        metavar="NAME",
        help="OOD sets (registry names or folder:PATH); default: the ID set's standard partners",
    )
    parser.add_argument(
        "--score",
        nargs="+",
        default=["mcm"],
        metavar="NAME",
        help=f"scores, case-insensitive, or `all`: {', '.join(SCORES)} (default: mcm)",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T (default: 1)")
    parser.add_argument(
        "--templates",
        default="single",
        help=f"prompt templates: {' | '.join(TEMPLATE_SETS)} | a file with one per line "
        "(default: single, 'a photo of a {}.')",
    )
    parser.add_argument("--out-dir", default=None, help="results folder (default: results/<in>/<model>/<timestamp>)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out-dir even if it holds results (default: pick a new name)",
    )
    add_model_args(parser)
    add_data_args(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    try:
        scores = resolve_scores(args.score)
    except ValueError as err:
        raise UserError(str(err)) from err
    if args.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {args.temperature}")
    templates = load_templates(args.templates)
    device = resolve_device(args.device)
    options = DataOptions(args.data_root, args.download, args.limit, args.seed)
    for name in [args.id_name, *(args.out or [])]:
        get_spec(name)  # every name is checked before anything is downloaded
    id_data = load_dataset(args.id_name, "test", options.root, options.download, options.limit, options.seed)
    ood_sets = resolve_ood_sets(args.id_name, args.out, options)
    bundle = load_clip(args.model, args.pretrained, args.ckpt, device, args.model_cache_dir, args.seed)
    summary = evaluate(
        bundle,
        id_data,
        ood_sets,
        scores,
        templates,
        FeatureCache(args.cache_dir, args.feature_dtype),
        args.temperature,
        args.batch_size,
        args.workers,
    )
    accuracy = summary["id_accuracy"]
    print(
        f"\nID {args.id_name}: {summary['id_samples']} test images"
        + (f", zero-shot top-1 {100 * accuracy:.2f}%" if accuracy is not None else "")
    )
    print(ood_table(summary["results"]))
    out_dir = run_folder(args.out_dir, [args.id_name.replace("/", "_").replace(":", "_"), args.model], args.overwrite)
    write_json(out_dir / "results.json", {**summary, **run_metadata(args), "model_weights": bundle.weights})
    print(f"\nsaved {out_dir / 'results.json'}")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    return guarded(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

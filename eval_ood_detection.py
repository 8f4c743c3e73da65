"""OOD detection: encode the ID and OOD sets once, score them every way asked, report exact metrics.

python eval_ood_detection.py --in cifar10 --score MCM
python eval_ood_detection.py --in imagenet --score all --k 100 1000
python eval_ood_detection.py --in digits --score all --model tiny --pretrained none
torchrun --nproc_per_node=8 eval_ood_detection.py --in imagenet --score all   # extraction on 8 GPUs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from utils.cache import FeatureCache
from utils.cli import (
    add_data_args,
    add_model_args,
    check_writable_dir,
    guarded,
    positive_float,
    positive_int,
    run_folder,
    run_metadata,
)
from utils.data import get_spec
from utils.device import resolve_device
from utils.distributed import World, close, init_world, local_device, main_first
from utils.errors import UserError
from utils.features import image_features
from utils.models import TIMM_PREFIX, check_model_name, load_model
from utils.negatives import load_words
from utils.ood_eval import DataOptions, EvalOptions, evaluate, fitted, knn_ks, resolve_ood_sets
from utils.prompts import TEMPLATE_SETS, load_templates
from utils.report import markdown_table, table_rows, write_results
from utils.scores import ALIASES, CHECKPOINT_SCORES, SCORES, canonical, needs_text, resolve_scores
from utils.weights import checkpoint_metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="id_name", default="cifar10",
                        help="ID dataset: a registry name (cifar10, cifar100, imagenet, imagenet10, imagenet20, "
                             "imagenet100, digits, ...) or folder:PATH (default: cifar10)")  # fmt: skip
    parser.add_argument(
        "--out",
        nargs="+",
        default=None,
        metavar="NAME",
        help="OOD sets (registry names or folder:PATH); default: the ID set's standard partners",
    )
    parser.add_argument("--score", nargs="+", default=["mcm"], metavar="NAME",
                        help=f"scores, case-insensitive, or `all`: {', '.join(SCORES)}; aliases: "
                             f"{', '.join(f'{a}={b}' for a, b in ALIASES.items())} (default: mcm)")  # fmt: skip
    parser.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="softmax temperature T of mcm, energy, entropy, var (default: 1, as in MCM)",
    )
    parser.add_argument("--templates", default="single",
                        help=f"prompt templates: {' | '.join(TEMPLATE_SETS)} | a file with one per line "
                             "(default: single, 'a photo of a {}.')")  # fmt: skip
    parser.add_argument("--k", nargs="+", type=positive_int, default=None, metavar="K",
                        help="KNN's k, one or several (one neighbour search covers all); default: 50, "
                             "1000 for imagenet")  # fmt: skip
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="N bootstrap rounds for 95%% confidence intervals (default: 0, none)",
    )
    parser.add_argument(
        "--neg-words",
        default=None,
        metavar="FILE",
        help="neglabel's candidate words, one per line (default: WordNet's nouns and adjectives)",
    )
    parser.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write histogram and ROC PNGs per score (default: on)",
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


def checkpoint_scores(scores: list[str], requested: Sequence[str], meta: dict) -> list[str]:
    """kplus1 and group read their prompts from a finetune_clip.py checkpoint; without one they cannot run."""
    named = {canonical(n) for n in requested if n.lower() != "all"}
    missing = [s for s in scores if s in CHECKPOINT_SCORES and CHECKPOINT_SCORES[s] not in meta]
    explicit = [s for s in missing if s in named]
    if explicit:
        raise UserError(f"{', '.join(explicit)} need --ckpt with a checkpoint from finetune_clip.py --method "
                        f"{explicit[0]} (it stores the prompts the score uses)")  # fmt: skip
    return [s for s in scores if s not in missing]


def choose_scores(requested: Sequence[str], model: str) -> list[str]:
    """Registry names; with an image-only model `all` drops text scores and a text score named outright fails."""
    try:
        scores = resolve_scores(requested)
    except ValueError as err:
        raise UserError(str(err)) from err
    if model.startswith(TIMM_PREFIX):
        named = [canonical(n) for n in requested if n.lower() != "all" and needs_text(canonical(n))]
        if named:
            raise UserError(f"{', '.join(named)} compare images with class-name text and need a text encoder; "
                            f"{model} is image-only (use knn, maha, rmd or lp_* with it)")  # fmt: skip
        dropped = [s for s in scores if needs_text(s)]
        if dropped:
            print(f"skipping {', '.join(dropped)}: {model} has no text encoder", file=sys.stderr)
        scores = [s for s in scores if not needs_text(s)]
    return scores


def run(args: argparse.Namespace) -> dict:
    world = init_world(resolve_device(args.device))
    try:
        return _run(args, world)
    finally:
        close(world)


def _run(args: argparse.Namespace, world: World) -> dict:
    """Under torchrun every rank encodes a shard of each dataset; rank 0 alone scores and reports."""
    check_model_name(args.model)
    meta = checkpoint_metadata(args.ckpt)
    scores = checkpoint_scores(choose_scores(args.score, args.model), args.score, meta)
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    templates = load_templates(args.templates)
    device = local_device(resolve_device(args.device), world)
    data = DataOptions(args.data_root, args.download, args.limit, args.seed)
    for name in [args.id_name, *(args.out or [])]:
        get_spec(name)  # every name is checked before anything is downloaded
    check_writable_dir(args.cache_dir, "--cache-dir")
    if args.out_dir:
        check_writable_dir(args.out_dir, "--out-dir")
    with main_first(world):  # rank 0 downloads, the others then find the files
        id_test, id_train, ood_sets, bundle = _load(args, scores, data, device)
    options = EvalOptions(templates, args.temperature, args.k, args.batch_size, args.workers, args.bootstrap,
                          args.seed, args.neg_words, meta)  # fmt: skip
    cache = FeatureCache(args.cache_dir, args.feature_dtype)
    if world.distributed:
        for dataset in [id_train, id_test, *ood_sets]:
            if dataset is not None:
                image_features(bundle, dataset, cache, args.batch_size, args.workers, world)
        if not world.main:
            return {}
    evaluation = evaluate(bundle, id_test, ood_sets, scores, options, cache, id_train)
    accuracy = ", ".join(f"{k} {100 * v:.2f}%" if k.endswith("top1") else f"{k} {v:g}"
                         for k, v in evaluation.accuracy.items())  # fmt: skip
    print(f"\nID {args.id_name}: {evaluation.samples['ID']} test images" + (f"; {accuracy}" if accuracy else ""))
    for note in evaluation.notes:
        print(f"note: {note}")
    print(markdown_table(table_rows(evaluation)))
    out_dir = run_folder(args.out_dir, [args.id_name.replace("/", "_").replace(":", "_"), args.model.replace(":", "_")],
                         args.overwrite)  # fmt: skip
    write_results(out_dir, evaluation, {**run_metadata(args), "model_weights": bundle.weights}, plots=args.plots)
    print(f"\nsaved results.json, results.csv, results.md{', plots' if args.plots else ''} in {out_dir}")
    return {"metrics": evaluation.metrics, "accuracy": evaluation.accuracy, "samples": evaluation.samples,
            "out_dir": str(out_dir)}  # fmt: skip


def _load(args: argparse.Namespace, scores: list[str], data: DataOptions, device: torch.device) -> tuple:
    """The ID test (and train, if a score fits on it) split, the OOD sets and the model, each checked."""
    id_test = data.load(args.id_name, "test")
    if any(needs_text(s) for s in scores) and not id_test.classnames:
        raise UserError(f"'{args.id_name}' has no class names (a flat folder?), which {', '.join(scores)} need; "
                        f"use an ImageFolder tree with one folder per class")  # fmt: skip
    id_train = data.load(args.id_name, "train") if any(fitted(s) for s in scores) else None
    if "knn" in scores and max(knn_ks(args.id_name, args.k)) > len(id_train.dataset):
        raise UserError(f"knn: k={max(knn_ks(args.id_name, args.k))} needs at least k training images; "
                        f"{args.id_name} train has {len(id_train.dataset)}")  # fmt: skip
    if "neglabel" in scores:
        load_words(args.neg_words)  # a missing or empty word list fails now, not after extraction
    ood_sets = resolve_ood_sets(args.id_name, args.out, data)
    bundle = load_model(args.model, args.pretrained, args.ckpt, device, args.model_cache_dir, args.seed)
    return id_test, id_train, ood_sets, bundle


def main(argv: Sequence[str] | None = None) -> dict:
    return guarded(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

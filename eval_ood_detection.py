"""OOD detection: encode the ID and OOD sets once, score them every way asked, report exact metrics.

python eval_ood_detection.py --in cifar10 --score MCM
python eval_ood_detection.py --in imagenet --score all --k 100 1000
python eval_ood_detection.py --in digits --score all --model tiny --pretrained none
python eval_ood_detection.py --preset mcm-imagenet              # a paper's protocol, its published numbers beside
torchrun --nproc_per_node=8 eval_ood_detection.py --in imagenet --score all   # extraction on 8 GPUs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from utils.cli import (
    add_data_args,
    add_model_args,
    add_settings,
    check_writable_dir,
    from_args,
    given_arguments,
    guarded,
    list_action,
    option_strings,
    run_folder,
    run_metadata,
)
from utils.device import PIPELINES, PRECISIONS
from utils.errors import UserError
from utils.evaluation import inputs
from utils.evaluation.metrics import EXTRA_METRICS, MIN_BOOTSTRAP
from utils.evaluation.presets import Preset, apply_preset, comparable, list_presets, load_preset, with_published
from utils.evaluation.transforms import TRANSFORMS, check_settings, transform_settings
from utils.models.preprocess import INTERPOLATIONS
from utils.prompts import TEMPLATE_SETS
from utils.scores import ALIASES, SCORES, listing
from utils.settings import non_negative_int

if TYPE_CHECKING:
    from utils.data.benchmark import Benchmark, BenchmarkRequest
    from utils.distributed import World
    from utils.evaluation.pipeline import Evaluation
    from utils.models.checkpoint import Checkpoint, ScoreContract
    from utils.prompts import Template

# What --help and --list-* need is imported above and imports no torch (tests/test_cli.py holds it); the run's
# modules are imported where they are used, so that a user's first command answers at once.


def _presets() -> list[str]:
    presets = [load_preset(name) for name in list_presets()]
    return [f"{p.name:24} {p.paper}{f' - {p.table}' if p.table else ''}" for p in presets]


def _scores() -> list[str]:
    return [f"{name:24} {description}" for name, description in listing()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="a paper's protocol (model, sets, prompts, preprocessing, k, T, ...) from "
                             "configs/presets/NAME.json; its published numbers go beside ours")  # fmt: skip
    parser.add_argument("--list-presets", action=list_action(_presets),
                        help="print every preset and its paper, then exit")  # fmt: skip
    parser.add_argument("--list-scores", action=list_action(_scores),
                        help="print every score and its paper, and the pytorch-ood detectors that cannot run on "
                             "cached features with the reason, then exit")  # fmt: skip
    parser.add_argument("--in", dest="id_name", default="cifar10",
                        help="ID dataset: a registry name (cifar10, cifar100, imagenet, imagenet10, imagenet20, "
                             "imagenet100, digits, OpenOOD v1.5's openood_cifar10, openood_cifar100, "
                             "openood_imagenet200, openood_imagenet, ...) or folder:PATH "
                             "(default: cifar10)")  # fmt: skip
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
    parser.add_argument("--classnames", default=None, metavar="NAMES",
                        help="the ID set's class names for the prompts, in its class order: a file with one per line "
                             "or a comma list (e.g. for a folder: set whose folder names are codes) (default: the "
                             "dataset's own)")  # fmt: skip
    parser.add_argument("--templates", default=None,
                        help=f"prompt templates: {' | '.join(TEMPLATE_SETS)} | a file, one per line (default: the "
                             "--ckpt's learned prompts (coop, locoop), else single: 'a photo of a {}.')")  # fmt: skip
    parser.add_argument("--bootstrap", type=_rounds, default=0, metavar="N",
                        help=f"N bootstrap rounds for 95%% percentile confidence intervals: 0 (none) or at least "
                             f"{MIN_BOOTSTRAP}, so that each end of the interval rests on 25 rounds "
                             f"(default: 0)")  # fmt: skip
    parser.add_argument("--shifted-id", nargs="+", default=[], metavar="NAME",
                        help="covariate-shifted sets that count as ID (OpenOOD's full-spectrum protocol), joined to "
                             "the ID test set by class: e.g. imagenet_v2 imagenet_r, or openood_imagenet:imagenet_r "
                             "(default: none)")  # fmt: skip
    parser.add_argument("--select", nargs="+", default=None, metavar="NAME=V1,V2",
                        help="choose each score's settings on validation data before any test set is read: grids "
                             f"of {_selectable()}, e.g. T=0.5,1,2 k=10,50,200; a score takes the best mean AUROC of "
                             "the settings it reads (default: none, the flags' values)")  # fmt: skip
    parser.add_argument("--select-ood", nargs="+", default=[], metavar="NAME[=SPLIT]",
                        help="--select's OOD validation sets, never test sets (default: OpenOOD's val OOD list for "
                             "openood_* benchmarks; required otherwise, e.g. digits_aux)")  # fmt: skip
    parser.add_argument("--select-holdout", type=float, default=0.1, metavar="FRACTION",
                        help="--select's ID validation images where the ID set has no val split: this seeded share "
                             "of ID train, left out of what scores fit on while choosing (default: 0.1)")  # fmt: skip
    parser.add_argument("--allow-overlap", action="store_true",
                        help="score an OOD set that the --ckpt model was fine-tuned on as its outlier pool (its "
                             "checkpoint records the pool), which is otherwise refused; recorded in results.json "
                             "(default: off)")  # fmt: skip
    parser.add_argument("--ood-split", nargs="+", default=[], metavar="NAME=SPLIT",
                        help="read an OOD set's other split, e.g. imagenet10_mcm=train as MCM's ImageNet-20 "
                             "protocol does (default: every OOD set's test split)")  # fmt: skip
    parser.add_argument(
        "--interpolation",
        choices=list(INTERPOLATIONS),
        default="model",
        help="resize interpolation: model = the model's own transform (open_clip: bicubic), "
        "bilinear = torchvision's default, as MCM's and NegLabel's code (default: model)",
    )
    parser.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                        help="image encoding on CUDA: auto = bf16 autocast (fp16 on GPUs without bf16), fp32, fp16, "
                             "bf16; part of the cache key; CPU always computes in fp32 (default: auto)")  # fmt: skip
    parser.add_argument("--pipeline", choices=list(PIPELINES), default="auto",
                        help="image decoding: tensor = file bytes to the device, JPEGs decoded there in batches "
                             "(nvJPEG on CUDA) and preprocessed as tensors; pil = decoded and preprocessed by the "
                             "loader workers; auto = tensor on CUDA, pil on CPU (default: auto)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the image tower for extraction (falls back to eager, with a warning, "
                             "where it fails) (default: off)")  # fmt: skip
    parser.add_argument("--extra-metrics", nargs="+", choices=list(EXTRA_METRICS), default=[], metavar="NAME",
                        help=f"metrics by another codebase's definition: {', '.join(EXTRA_METRICS)} "
                             "(default: none)")  # fmt: skip
    parser.add_argument(
        "--ood-resize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bring OOD images to the ID benchmark's resolution first where its protocol does (CIFAR: 32x32, as "
        "KNN-OOD and ODIN; the ID set's own images are untouched) (default: on)",
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
    add_settings(parser, inputs.score_settings(), "score settings (each flag names the scores that read it)")
    add_model_args(parser)
    parser.add_argument("--transform", choices=list(TRANSFORMS), default=None,
                        help="change the model's weights before any image is encoded: "
                             f"{'; '.join(f'{k} = {t.paper}' for k, t in TRANSFORMS.items())}; part of the cache "
                             "key, recorded in results.json (default: none)")  # fmt: skip
    add_settings(parser, transform_settings(), "model transform settings (--transform)")
    add_data_args(parser)
    return parser


def _rounds(text: str) -> int:
    rounds = non_negative_int(text)
    if 0 < rounds < MIN_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"must be 0 (no intervals) or at least {MIN_BOOTSTRAP}, so that each end of "
                                         f"a 95% interval rests on 25 rounds; got {rounds}")  # fmt: skip
    return rounds


def _selectable() -> str:
    names = [(setting.select[0], name) for name, (setting, _) in inputs.score_settings().items() if setting.select]
    return ", ".join(short if short == name else f"{short} ({name})" for short, name in names)


def run(args: argparse.Namespace) -> dict:
    from utils.device import resolve_device
    from utils.distributed import close, init_world

    world = init_world(resolve_device(args.device))
    try:
        return _run(args, world)
    finally:
        close(world)


def class_prompts(args: argparse.Namespace, contract: ScoreContract | None) -> tuple[tuple[Template, ...], list[str]]:
    """The run's class-prompt templates and a note: a learned context (coop, locoop) wins over a preset's
    templates, not over --templates written on the command line."""
    from utils.models.checkpoint import class_templates

    spec = args.templates
    if spec and contract and contract.context is not None and "templates" not in getattr(args, "given", []):
        note = (f"the class prompts are the checkpoint's learned ones, not the preset's --templates {spec} (write "
                f"--templates to use those)")  # fmt: skip
        return class_templates(None, contract), [note]
    return class_templates(spec, contract), []


def _run(args: argparse.Namespace, world: World) -> dict:
    """Under torchrun every rank encodes a shard of each dataset; rank 0 alone scores and reports."""
    from utils.data.benchmark import resolve_id, resolve_ood
    from utils.data.splits import DataOptions
    from utils.device import resolve_device
    from utils.distributed import local_device, main_first
    from utils.evaluation import selection
    from utils.evaluation.options import EvalOptions
    from utils.evaluation.pipeline import encode, evaluate, plan
    from utils.features.store import FeatureCache
    from utils.models.checkpoint import read_checkpoint
    from utils.models.loading import check_model_name

    preset = _with_preset(args)
    check_settings(args.transform, set(args.given) | set(preset.settings if preset else ()))
    check_model_name(args.model)
    checkpoint = read_checkpoint(args.ckpt)
    contract = checkpoint.contract if checkpoint else None
    templates, notes = class_prompts(args, contract)
    declared = inputs.score_settings()
    settings = {name: getattr(args, name) for name in declared}
    options = from_args(EvalOptions, args, templates=templates, settings=settings)
    exp = inputs.Experiment(options, args.model, contract=contract, world=world, run_notes=notes)
    scores = plan(args.score, exp)
    grid = _grid(args, scores, exp, declared)
    request = _request(args, contract)
    specs = request.specs()  # every name is checked before anything is downloaded
    check_writable_dir(args.cache_dir, "--cache-dir")
    check_writable_dir(args.out_dir or "results", "--out-dir" if args.out_dir else "the default results folder")
    data = from_args(DataOptions, args, root=args.data_root)
    with main_first(world):  # rank 0 downloads, the others then find the files
        bench = resolve_id(request, data, inputs.needs_train(scores, options), specs)
        exp.id_test, exp.id_train = bench.id_test, bench.id_train
        widest = {k: v for k, v in (grid or {}).items() if declared[k][0].nargs}  # --select's k grid
        inputs.check(scores, replace(exp, options=options.with_settings(widest)))  # before any OOD set is fetched
        exp.ood_sets = resolve_ood(bench, data, bool(grid)).ood_sets
        exp.run_notes += bench.notes
        if grid:
            selection.check_grid(grid, bench.validation, exp.id_train)
        exp.bundle = _model(args, checkpoint, local_device(resolve_device(args.device), world))
    del checkpoint  # its weights are in the model now
    transform = _transform(args, exp, bench, data) if args.transform else None
    if args.compile:  # after the transform, which reads the image tower's blocks
        from utils.models.compile import compile_image_tower

        compile_image_tower(exp.bundle)
    exp.cache = FeatureCache(args.cache_dir, args.feature_dtype)
    choices = _choose(exp, bench, scores, grid) if grid else None  # before a test image is read
    encoded = encode(exp, scores)
    if not world.main:
        return {}
    evaluation = selection.score_chosen(exp, encoded, scores, choices) if grid else evaluate(exp, scores, encoded)
    evaluation.groups, incomplete = bench.groups()
    evaluation.notes += incomplete
    evaluation.skipped = dict(bench.skipped)
    rows = _report(args, evaluation, preset)
    return _save(args, evaluation, rows, exp, bench, choices, preset, transform)


def _with_preset(args: argparse.Namespace) -> Preset | None:
    """The --preset's settings put into `args` (a conflicting flag written by the user is an error)."""
    if not args.preset:
        return None
    preset = load_preset(args.preset)
    vars(args).update(apply_preset(preset, vars(args), args.given, option_strings(build_parser())))
    for difference in preset.differences:
        print(f"preset {preset.name}: {difference}", file=sys.stderr)
    return preset


def _grid(args: argparse.Namespace, scores: list[str], exp: inputs.Experiment, declared: dict) -> dict | None:
    """--select's grid, each setting read by one of `scores`; a note for setting flags that no score reads."""
    from utils.evaluation import selection

    read = selection.read_by(scores)
    given = getattr(args, "given", [])
    if unread := [s.flag for name, (s, _) in declared.items() if name in given and name not in read]:
        exp.run_notes.append(f"{', '.join(unread)} {'is' if len(unread) == 1 else 'are'} read by none of the scores "
                             f"run ({', '.join(scores)}): no effect")  # fmt: skip
    grid = selection.parse_grid(args.select) if args.select else None
    if not grid and (extra := [f for f in ("select_ood", "select_holdout") if f in given]):
        raise UserError(f"--{extra[0].replace('_', '-')} only applies with --select")
    if grid and (unused := [k for k in grid if k not in read]):
        raise UserError(f"--select {', '.join(unused)}: none of the scores {', '.join(scores)} reads it")
    return grid


def _request(args: argparse.Namespace, contract: ScoreContract | None) -> BenchmarkRequest:
    from utils.data.benchmark import BenchmarkRequest, parse_ood_splits
    from utils.data.classnames import parse_labels

    return BenchmarkRequest(args.id_name, args.out, parse_ood_splits(args.ood_split), args.shifted_id, args.ood_resize,
                            parse_labels(args.classnames) if args.classnames else None, args.select_ood,
                            args.select_holdout, contract.outliers if contract else (), args.allow_overlap)  # fmt: skip


def _model(args: argparse.Namespace, checkpoint: Checkpoint | None, device: object) -> object:
    from utils.models.loading import load_model
    from utils.models.preprocess import with_interpolation

    bundle = load_model(args.model, args.pretrained, checkpoint, device, args.model_cache_dir, args.seed)
    bundle = replace(bundle, preprocess=with_interpolation(bundle.preprocess, args.interpolation),
                     precision=args.precision, pipeline=args.pipeline)  # fmt: skip
    return bundle


def _transform(args: argparse.Namespace, exp: inputs.Experiment, bench: Benchmark, data: object) -> dict:
    """--transform applied to the run's model (rank 0 first: it caches what it finds, the other ranks read that)."""
    from utils.data.splits import renamed
    from utils.distributed import agree, main_first
    from utils.evaluation.transforms import TransformContext, apply_transform

    train = bench.id_train
    if train is None and TRANSFORMS[args.transform].needs_train:
        train = data.load_id_train(args.id_name, bench.spec)
        if bench.request.classnames:
            train = renamed(train, list(bench.request.classnames))
    context = TransformContext(train, exp.id_test.classnames or (), exp.options.templates, args.seed, args.workers,
                               Path(args.cache_dir))  # fmt: skip
    with main_first(exp.world):
        exp.bundle, record = apply_transform(args.transform, exp.bundle, context, vars(args))
    if not agree(exp.bundle.fingerprint, exp.world):  # the ranks must encode with the same weights
        raise UserError(f"--transform {args.transform}: the processes' weights differ after it (an SVD that differs "
                        f"between devices); run it in one process")  # fmt: skip
    exp.run_notes += context.notes
    return record


def _choose(exp: inputs.Experiment, bench: Benchmark, scores: list[str], grid: dict[str, list]) -> dict:
    """Every score's setting chosen on the validation sets. Under torchrun every rank encodes them."""
    from utils.evaluation import selection

    encoded = selection.encode_validation(exp, bench.validation, scores)
    choices = selection.choose(exp, bench.validation, encoded, scores, grid) if exp.world.main else {}
    for name, choice in choices.items():
        print(f"{name}: chose {choice.chosen} on {bench.validation.split}")
    return choices


def _report(args: argparse.Namespace, evaluation: Evaluation, preset: Preset | None) -> list[dict]:
    """Print the accuracy line, the notes and the table (the preset's published numbers beside ours)."""
    from utils.evaluation.report import markdown_table, table_rows

    accuracy = ", ".join(f"{k} {100 * v:.2f}%" if k.endswith("top1") else f"{k} {v:g}"
                         for k, v in evaluation.accuracy.items())  # fmt: skip
    print(f"\nID {args.id_name}: {evaluation.samples['ID']} test images" + (f"; {accuracy}" if accuracy else ""))
    rows = table_rows(evaluation)
    if preset:
        rows = with_published(rows, preset)
        if reason := comparable(preset, vars(args)):
            evaluation.notes.append(f"published numbers ({preset.table}) are not comparable: {reason}")
    for note in evaluation.notes:
        print(f"note: {note}")
    print(markdown_table(rows))
    return rows


def _save(args: argparse.Namespace, evaluation: Evaluation, rows: list[dict], exp: inputs.Experiment,
          bench: Benchmark, choices: dict | None, preset: Preset | None, transform: dict | None) -> dict:  # fmt: skip
    from utils.data.openood import BENCHMARKS as OPENOOD_BENCHMARKS
    from utils.evaluation.openood_export import FOLDER, write_openood
    from utils.evaluation.report import OWNED, write_results

    out_dir: Path = run_folder(args.out_dir, [args.id_name.replace("/", "_").replace(":", "_"),
                                              args.model.replace(":", "_")], args.overwrite, OWNED)  # fmt: skip
    metadata = {**run_metadata(args), "model_weights": exp.bundle.weights, "ood_protocol": bench.protocol,
                "trained_on_as_outliers": bench.overlaps}  # fmt: skip
    if transform is not None:
        metadata["model_transform"] = transform
    if choices is not None:
        metadata["selection"] = {name: c.summary(bench.validation.split) for name, c in choices.items()}
    if preset:
        metadata["preset"] = {"name": preset.name, "paper": preset.paper, "table": preset.table,
                              "source": preset.source, "published": preset.published,
                              "comparable": comparable(preset, vars(args)) is None}  # fmt: skip
    write_results(out_dir, evaluation, metadata, rows=rows, plots=args.plots)
    exported = write_openood(out_dir, evaluation) if args.id_name in OPENOOD_BENCHMARKS else []
    print(f"\nsaved results.json, results.csv, results.md{', plots' if args.plots else ''}"
          f"{f', {FOLDER}/<score>.csv (OpenOOD layout)' if exported else ''} in {out_dir}")  # fmt: skip
    return {"metrics": evaluation.metrics, "accuracy": evaluation.accuracy, "samples": evaluation.samples,
            "out_dir": str(out_dir), "rows": rows, "notes": evaluation.notes}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = sorted(given_arguments(parser, argv))  # a preset refuses to override what was written
    return guarded(run, args)


if __name__ == "__main__":
    main()

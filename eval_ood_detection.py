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

from utils.cli import (
    add_data_args,
    add_model_args,
    check_writable_dir,
    from_args,
    given_arguments,
    guarded,
    option_strings,
    positive_float,
    positive_int,
    run_folder,
    run_metadata,
)
from utils.data.classnames import parse_labels
from utils.data.full_spectrum import full_spectrum
from utils.data.loading import DataOptions, renamed
from utils.data.openood import BENCHMARKS as OPENOOD_BENCHMARKS
from utils.data.registry import get_spec
from utils.device import PRECISIONS, resolve_device
from utils.distributed import World, close, init_world, local_device, main_first
from utils.errors import UserError
from utils.evaluation import inputs, openood_export, selection
from utils.evaluation.metrics import EXTRA_METRICS
from utils.evaluation.openood_export import write_openood
from utils.evaluation.options import EvalOptions
from utils.evaluation.pipeline import encode, evaluate, plan, resolve_ood_sets
from utils.evaluation.presets import apply_preset, comparable, list_presets, load_preset, with_published
from utils.evaluation.report import incomplete_groups, markdown_table, table_rows, write_results
from utils.features.images import PIPELINES
from utils.features.store import FeatureCache
from utils.models.compile import compile_image_tower
from utils.models.loading import check_model_name, load_model
from utils.models.preprocess import INTERPOLATIONS, with_interpolation
from utils.prompts import TEMPLATE_SETS, Template
from utils.scores import ALIASES, HEADS, SCORES, listing
from utils.training.checkpoints import ScoreContract, class_templates, read_contract


class _ListPresets(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        for name in list_presets():
            preset = load_preset(name)
            print(f"{name:24} {preset.paper}{f' - {preset.table}' if preset.table else ''}")
        parser.exit()


class _ListScores(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        for name, description in listing():
            print(f"{name:24} {description}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help="a paper's protocol (model, sets, prompts, preprocessing, k, T, ...) from "
                             "configs/presets/NAME.json; its published numbers go beside ours")  # fmt: skip
    parser.add_argument("--list-presets", action=_ListPresets, help="print every preset and its paper, then exit")
    parser.add_argument("--list-scores", action=_ListScores,
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
    parser.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="softmax temperature T of mcm, energy, entropy, var (default: 1, as in MCM)",
    )
    parser.add_argument(
        "--gl-lambda",
        type=float,
        default=1.0,
        metavar="LAMBDA",
        help="gl_mcm = mcm + LAMBDA * l_mcm (default: 1, GL-MCM's code; its ImageNet script: 0.5)",
    )
    parser.add_argument("--classnames", default=None, metavar="NAMES",
                        help="the ID set's class names for the prompts, in its class order: a file with one per line "
                             "or a comma list (e.g. for a folder: set whose folder names are codes) (default: the "
                             "dataset's own)")  # fmt: skip
    parser.add_argument("--templates", default=None,
                        help=f"prompt templates: {' | '.join(TEMPLATE_SETS)} | a file, one per line (default: the "
                             "--ckpt's learned prompts (coop, locoop), else single: 'a photo of a {}.')")  # fmt: skip
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
        help="neglabel's candidate words, one per line as WORD or WORD<TAB>noun|adj (default: the released pool's "
        "WordNet noun and adjective head lemmas)",
    )
    parser.add_argument("--neg-groups", type=positive_int, default=100, metavar="G",
                        help="neglabel: average the ID mass over G random groups of the negatives (default: 100, "
                             "as released; 1: one softmax over all)")  # fmt: skip
    parser.add_argument("--pood-head", choices=list(HEADS), default="zero_shot",
                        help="the linear head pytorch-ood's detectors (pood:*) read: zero_shot = CLIP's classifier, "
                             "logit_scale (100) x the class prompts, no bias; probe = the linear probe of lp_*, "
                             "fitted on the ID train features (default: zero_shot)")  # fmt: skip
    parser.add_argument("--shifted-id", nargs="+", default=[], metavar="NAME",
                        help="covariate-shifted sets that count as ID (OpenOOD's full-spectrum protocol), joined to "
                             "the ID test set by class: e.g. imagenet_v2 imagenet_r, or openood_imagenet:imagenet_r "
                             "(default: none)")  # fmt: skip
    parser.add_argument("--select", nargs="+", default=None, metavar="NAME=V1,V2",
                        help="choose each score's hyper-parameters on validation data before any test set is read: "
                             "grids of T (temperature), k, lambda (gl_lambda), groups (neg_groups), e.g. "
                             "T=0.5,1,2 k=10,50,200; a score takes the best mean AUROC of the settings it uses "
                             "(default: none, the flags' values)")  # fmt: skip
    parser.add_argument("--select-ood", nargs="+", default=[], metavar="NAME[=SPLIT]",
                        help="--select's OOD validation sets, never test sets (default: OpenOOD's val OOD list for "
                             "openood_* benchmarks; required otherwise, e.g. digits_aux)")  # fmt: skip
    parser.add_argument("--select-holdout", type=float, default=0.1, metavar="FRACTION",
                        help="--select's ID validation images where the ID set has no val split: this seeded share "
                             "of ID train, left out of what scores fit on while choosing (default: 0.1)")  # fmt: skip
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
    add_model_args(parser)
    add_data_args(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    world = init_world(resolve_device(args.device))
    try:
        return _run(args, world)
    finally:
        close(world)


def class_prompts(args: argparse.Namespace, contract: ScoreContract | None) -> tuple[tuple[Template, ...], list[str]]:
    """The run's class-prompt templates and a note: a learned context (coop, locoop) wins over a preset's
    templates, not over --templates written on the command line."""
    spec = args.templates
    if spec and contract and contract.context is not None and "templates" not in getattr(args, "given", []):
        note = (f"the class prompts are the checkpoint's learned ones, not the preset's --templates {spec} (write "
                f"--templates to use those)")  # fmt: skip
        return class_templates(None, contract), [note]
    return class_templates(spec, contract), []


def _run(args: argparse.Namespace, world: World) -> dict:
    """Under torchrun every rank encodes a shard of each dataset; rank 0 alone scores and reports."""
    preset = load_preset(args.preset) if args.preset else None
    if preset:
        vars(args).update(apply_preset(preset, vars(args), args.given, option_strings(build_parser())))
        for difference in preset.differences:
            print(f"preset {preset.name}: {difference}", file=sys.stderr)
    check_model_name(args.model)
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    contract = read_contract(args.ckpt)
    templates, notes = class_prompts(args, contract)
    options = from_args(EvalOptions, args, templates=templates)
    exp = inputs.Experiment(options, args.model, contract=contract, world=world, run_notes=notes)
    scores = plan(args.score, exp)
    grid = selection.parse_grid(args.select) if args.select else None
    if not grid and (given := [f for f in ("select_ood", "select_holdout") if f in getattr(args, "given", [])]):
        raise UserError(f"--{given[0].replace('_', '-')} only applies with --select")
    if grid and (unused := [k for k in grid if not any(k in SCORES[s].inputs for s in scores)]):
        raise UserError(f"--select {', '.join(unused)}: none of the scores {', '.join(scores)} takes it")
    for name in [args.id_name, *(args.out or []), *args.shifted_id, *(n.partition("=")[0] for n in args.select_ood)]:
        get_spec(name)  # every name is checked before anything is downloaded
    check_writable_dir(args.cache_dir, "--cache-dir")
    if args.out_dir:
        check_writable_dir(args.out_dir, "--out-dir")
    data = from_args(DataOptions, args, root=args.data_root)
    with main_first(world):  # rank 0 downloads, the others then find the files
        exp.id_test = data.load(args.id_name, "test")
        exp.id_train = data.load_id_train(args.id_name) if inputs.needs_train(scores, options) else None
        names = parse_labels(args.classnames) if args.classnames else None
        if names:
            exp.id_test = renamed(exp.id_test, names)
            exp.id_train = exp.id_train and renamed(exp.id_train, names)
        plain, shifted = exp.id_test, [data.load(name, "test") for name in args.shifted_id]
        if shifted:
            exp.id_test = full_spectrum(plain, shifted)
            exp.run_notes.append(
                f"full-spectrum ID: the {len(exp.id_test.dataset)} ID test images are {plain.name}'s "
                f"{len(plain.dataset)} and those of {', '.join(args.shifted_id)}, labelled by class"
            )
        checked = replace(exp, options=replace(exp.options, k=grid["k"])) if grid and "k" in grid else exp
        inputs.check(scores, checked)  # every score's requirements, before any image is encoded (--select's k grid)
        exp.ood_sets = resolve_ood_sets(args.id_name, args.out, data, args.ood_resize, _ood_splits(args.ood_split))
        protocol = _protocol(args)
        val = grid and selection.validation_data(args.id_name, data, args.select_ood, args.select_holdout,
                                                  [plain, *shifted, *exp.ood_sets], protocol["resolution"])  # fmt: skip
        if grid:
            val.id_val = renamed(val.id_val, names) if names else val.id_val
            selection.check_grid(grid, val, exp.id_train)
        if protocol["resolution"]:
            exp.run_notes.append(f"OOD images resized to {protocol['resolution']}x{protocol['resolution']} first "
                             f"({protocol['source']}; --no-ood-resize keeps them as they are)")  # fmt: skip
        device = local_device(resolve_device(args.device), world)
        bundle = load_model(args.model, args.pretrained, args.ckpt, device, args.model_cache_dir, args.seed)
        exp.bundle = replace(bundle, preprocess=with_interpolation(bundle.preprocess, args.interpolation),
                             precision=args.precision, pipeline=args.pipeline)  # fmt: skip
        if args.compile:
            compile_image_tower(exp.bundle)
    exp.cache = FeatureCache(args.cache_dir, args.feature_dtype)
    choices = None
    if grid:  # validation sets encoded and every choice made before a test image is read
        val_encoded = selection.encode_validation(exp, val, scores)
        choices = selection.choose(exp, val, val_encoded, scores, grid) if world.main else {}
        for name, choice in choices.items():
            print(f"{name}: chose {choice.chosen} on {val.split}")
    encoded = encode(exp, scores)
    if not world.main:
        return {}
    evaluation = selection.score_chosen(exp, encoded, scores, choices) if grid else evaluate(exp, scores, encoded)
    tested = [d.name for d in exp.ood_sets if d.split == "test"]  # a set read from another split is not the benchmark's
    evaluation.groups = {g: sets for g, sets in get_spec(args.id_name).ood_groups.items() if set(sets) <= set(tested)}
    evaluation.notes += incomplete_groups(tested, get_spec(args.id_name).ood_groups)
    accuracy = ", ".join(f"{k} {100 * v:.2f}%" if k.endswith("top1") else f"{k} {v:g}"
                         for k, v in evaluation.accuracy.items())  # fmt: skip
    print(f"\nID {args.id_name}: {evaluation.samples['ID']} test images" + (f"; {accuracy}" if accuracy else ""))
    for note in evaluation.notes:
        print(f"note: {note}")
    rows = table_rows(evaluation)
    if preset:
        rows = with_published(rows, preset)
        if reason := comparable(preset, vars(args)):
            evaluation.notes.append(f"published numbers ({preset.table}) are not comparable: {reason}")
            print(f"note: {evaluation.notes[-1]}")
    print(markdown_table(rows))
    out_dir = run_folder(args.out_dir, [args.id_name.replace("/", "_").replace(":", "_"), args.model.replace(":", "_")],
                         args.overwrite)  # fmt: skip
    metadata = {**run_metadata(args), "model_weights": exp.bundle.weights, "ood_protocol": _protocol(args)}
    if grid:
        metadata["selection"] = {name: choice.summary(val.split) for name, choice in choices.items()}
    if preset:
        metadata["preset"] = {"name": preset.name, "paper": preset.paper, "table": preset.table,
                              "source": preset.source, "published": preset.published,
                              "comparable": comparable(preset, vars(args)) is None}  # fmt: skip
    write_results(out_dir, evaluation, metadata, rows=rows, plots=args.plots)
    exported = write_openood(out_dir, evaluation) if args.id_name in OPENOOD_BENCHMARKS else []
    print(f"\nsaved results.json, results.csv, results.md{', plots' if args.plots else ''}"
          f"{f', {openood_export.FOLDER}/<score>.csv (OpenOOD layout)' if exported else ''} in {out_dir}")  # fmt: skip
    return {"metrics": evaluation.metrics, "accuracy": evaluation.accuracy, "samples": evaluation.samples,
            "out_dir": str(out_dir)}  # fmt: skip


def _protocol(args: argparse.Namespace) -> dict:
    """How the OOD sets were prepared: the ID benchmark's resize and per-class caps, as applied in this run."""
    protocol = get_spec(args.id_name).ood_protocol
    return {"resolution": protocol.resolution if args.ood_resize else None, "per_class": protocol.per_class,
            "source": protocol.source}  # fmt: skip


def _ood_splits(pairs: Sequence[str]) -> dict[str, str]:
    splits = {}
    for pair in pairs:
        name, sep, split = pair.rpartition("=")
        if not sep or not name or not split:
            raise UserError(f"--ood-split takes NAME=SPLIT, e.g. imagenet10_mcm=train; got '{pair}'")
        splits[name] = split
    return splits


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = sorted(given_arguments(parser, argv))  # a preset refuses to override what was written
    return guarded(run, args)


if __name__ == "__main__":
    main()

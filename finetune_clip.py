"""OOD-aware fine-tuning of CLIP: the project notes' four baselines, and CoOp/LoCoOp prompt learning.

    python finetune_clip.py --in imagenet10 --method contrastive --epochs 10 --out-dir runs/in10-contrastive
    python finetune_clip.py --in digits --method kplus1 --model tiny --pretrained none --lr 3e-4
    python finetune_clip.py --in imagenet --method locoop --shots 16 --out-dir runs/locoop-16shot
    torchrun --nproc_per_node=4 finetune_clip.py --in imagenet10 --method oe --aux imagenet100 \
        --eval-out inaturalist sun places textures --out-dir runs/oe

Methods: contrastive (CLIP's loss on ID image-caption pairs, class-aware targets), kplus1 (a K+1-th "OOD"
prompt trained on auxiliary outliers), oe (outlier exposure: uniform predictions on outliers), group
(MOS-style groups, each with an "others" slot), coop (a learned prompt context on a frozen CLIP), locoop (CoOp
plus the entropy of off-class patches), negprompt (negative prompts beside a learned positive one, from ID images
alone), idlike (OOD prompts learned against each ID image's least class-like crops). The run folder gets final.pt
(weights + what the method's score needs; --ckpt loads it everywhere), last.pt (the full training state, for
--resume) and metrics.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.cli import add_data_args, add_model_args, add_settings, guarded
from utils.errors import UserError
from utils.prompts import TEMPLATE_SETS
from utils.settings import collect
from utils.training.clip_finetune import TRAINING
from utils.training.methods import METHODS

# What --help needs is imported above; the run's modules are imported where they are used (the methods' objectives
# are torch modules, so --help imports torch, not torchvision or open_clip).

DEFAULT_AUX = {"digits": "digits_aux"}  # the offline experiment's outliers: digits 5-6
OWNED = ("final.pt", "last.pt", "metrics.jsonl", "results.json")  # a run folder's files: --overwrite replaces them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--in", dest="id_name", default="imagenet10", help="ID dataset to train on (default: imagenet10)"
    )
    parser.add_argument(
        "--method", choices=list(METHODS), default="contrastive", help="objective (default: contrastive)"
    )
    parser.add_argument("--aux", default=None,
                        help="auxiliary outlier pool (a dataset name or folder:PATH) for kplus1, oe and group "
                             f"(default: {', '.join(f'{k} -> {v}' for k, v in DEFAULT_AUX.items())})")  # fmt: skip
    parser.add_argument("--eval-out", nargs="+", default=None, metavar="NAME",
                        help="the OOD sets the model will be tested on; the auxiliary pool must not overlap them "
                             "(default: the ID set's standard OOD partners)")  # fmt: skip
    parser.add_argument("--templates", default="ensemble",
                        help=f"caption templates for contrastive: {' | '.join(TEMPLATE_SETS)} | a file (default: "
                             "ensemble); class prompts are always 'a photo of a {}.', as the scores use")  # fmt: skip
    parser.add_argument(
        "--out-dir", default=None, help="run folder (default: results/finetune/<in>/<method>/<model>/<timestamp>)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out-dir even if it holds an earlier run, replacing that run's files "
                             "(default: pick a new name, as the other scripts do)")  # fmt: skip
    add_settings(parser, {s.name: (s, []) for s in TRAINING}, "training", overrides=METHOD_DEFAULTS)
    add_settings(parser, METHOD_SETTINGS, "method settings (each flag names the methods that read it)")
    add_model_args(parser)
    add_data_args(parser, batch_size=False)
    return parser


METHOD_SETTINGS = collect((name, cls.settings) for name, cls in METHODS.items())
# training setting -> {method: its paper's value}, where a method fixes one
METHOD_DEFAULTS = {s.name: {m: cls.defaults[s.name] for m, cls in METHODS.items() if s.name in cls.defaults}
                   for s in TRAINING}  # fmt: skip


def with_method_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Training settings not given take the method's paper's value where it has one, else the declared default."""
    for setting in TRAINING:
        if getattr(args, setting.name) is None:
            setattr(args, setting.name, METHODS[args.method].defaults.get(setting.name, setting.default))
    return args


def _method_options(args: argparse.Namespace, classnames: Sequence[str]) -> dict[str, Any]:
    """The chosen method's own settings (and the run values it takes), as its objective's keyword arguments."""
    method = METHODS[args.method]
    values = {name: getattr(args, name) for name in (*(s.name for s in method.settings), *method.inputs)}
    return method.options(values, args.id_name, classnames)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from utils.device import resolve_device
    from utils.distributed import close, init_world
    from utils.models.loading import check_model_name, has_text_encoder

    args = with_method_defaults(args)
    check_model_name(args.model)
    if not has_text_encoder(args.model):
        raise UserError("finetune_clip.py trains CLIP models (image and text towers); timm backbones have no text")
    world = init_world(resolve_device(args.device))
    try:
        return _run(args, world)
    finally:
        close(world)


def _run(args: argparse.Namespace, world) -> dict[str, Any]:
    from utils.atomic import write_json
    from utils.cli import check_writable_dir, from_args, run_folder, run_metadata
    from utils.data.leakage import check_no_leakage
    from utils.data.registry import get_spec
    from utils.data.splits import DataOptions
    from utils.device import resolve_device
    from utils.distributed import barrier, local_device
    from utils.models.loading import load_model
    from utils.models.weights import fingerprint
    from utils.prompts import load_templates
    from utils.training.clip_finetune import TrainConfig, save_model, train

    device = local_device(resolve_device(args.device), world)
    if world.distributed and not args.out_dir:
        raise UserError("under torchrun, pass --out-dir so that every process writes to the same run folder")
    if args.resume and not (args.out_dir and (Path(args.out_dir) / "last.pt").is_file()):
        raise UserError(f"--resume needs --out-dir of an earlier run holding last.pt (got {args.out_dir})")
    check_writable_dir(args.out_dir or "results", "--out-dir")
    earlier = args.out_dir and Path(args.out_dir).is_dir() and any(Path(args.out_dir).iterdir())
    if world.distributed and earlier and not (args.resume or args.overwrite):
        raise UserError(f"--out-dir {args.out_dir} holds an earlier run: --resume continues it, --overwrite replaces "
                        f"it, or name another folder")  # fmt: skip
    captions = load_templates(args.templates)
    data = from_args(DataOptions, args, root=args.data_root)
    train_data = data.load_id_train(args.id_name)
    for note in train_data.notes:
        print(f"note: {note}", file=sys.stderr)
    if not train_data.classnames:
        raise UserError(f"'{args.id_name}' has no class names (a flat folder?); fine-tuning needs labelled images")
    aux_name = args.aux or DEFAULT_AUX.get(args.id_name)
    aux = None
    if METHODS[args.method].needs_aux:
        if not aux_name:
            raise UserError(f"--method {args.method} trains on auxiliary outliers: pass --aux DATASET")
        spec = get_spec(aux_name)
        aux = data.load(aux_name, "train" if "train" in spec.splits else "test", spec=spec)  # a folder is one pool
        eval_out = args.eval_out or [n for n in train_data.spec.ood if n != args.id_name]
        check_no_leakage(aux, eval_out, args.data_root, train_data)
    options = _method_options(args, train_data.classnames)
    bundle = load_model(args.model, args.pretrained, args.ckpt, device, args.model_cache_dir, args.seed)
    objective = METHODS[args.method](bundle, train_data.classnames, captions, **options)
    config = from_args(TrainConfig, args, aux=aux.name if aux else None, method_options=options)
    out_dir = Path(args.out_dir) if args.resume else None
    if out_dir is None:
        out_dir = Path(args.out_dir) if world.distributed else None
        if world.main:
            out_dir = run_folder(args.out_dir, ["finetune", args.id_name, args.method, args.model], args.overwrite,
                                 OWNED)  # fmt: skip
        barrier(world)
    log = train(bundle, objective, train_data, aux, config, out_dir, world, resume=args.resume)
    bundle = dataclasses.replace(bundle, fingerprint=fingerprint(bundle.model))  # new weights, new cache key
    summary: dict[str, Any] = {"method": args.method, "log": log, "out_dir": str(out_dir),
                               "notes": list(train_data.notes)}  # fmt: skip
    if world.main:
        summary["zero_shot_top1"] = _zero_shot_top1(bundle, objective, data.load(args.id_name, "test"), args)
        save_model(out_dir / "final.pt", bundle, objective, config, base_weights=bundle.weights,
                   zero_shot_top1=summary["zero_shot_top1"])  # fmt: skip
        write_json(out_dir / "results.json", {**summary, **run_metadata(args)})
        print(f"{args.method} on {args.id_name}: zero-shot top-1 {100 * summary['zero_shot_top1']:.2f}% after "
              f"{args.epochs} epochs; final.pt, last.pt and metrics.jsonl in {out_dir}")  # fmt: skip
    barrier(world)
    return summary


def _zero_shot_top1(bundle, objective, test, args: argparse.Namespace) -> float:
    """The fine-tuned model's zero-shot accuracy on the ID test split, with its class prompts (learned ones too)."""
    from utils.evaluation.classification import classification_report, logits_of
    from utils.features.images import image_features
    from utils.features.store import FeatureCache
    from utils.features.text import text_embeddings

    head = text_embeddings(bundle, test.classnames, objective.class_templates)
    feats = image_features(bundle, test, FeatureCache(args.cache_dir, args.feature_dtype), 256, args.workers)
    return classification_report(logits_of(feats.features, head), feats.labels, list(test.classnames))["top1"]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return guarded(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

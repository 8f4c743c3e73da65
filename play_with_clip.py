"""Play with CLIP on in-distribution data: zero-shot evaluation, linear probes, and the scikit-image playground.

    python play_with_clip.py --mode zeroshot --in cifar10 [--test-labels "plane,car,..."]
    python play_with_clip.py --mode linear_probe --in cifar10 [--finetune --epochs 10]
    python play_with_clip.py --mode skimage

From Python (a notebook): zero_shot_evaluation_CLIP("cifar10"), linear_probe_evaluation_CLIP("cifar10"),
play_with_skimage(); each returns its results as a dict and saves them like the command line does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from utils.atomic import write_json
from utils.cli import (
    add_data_args,
    add_model_args,
    add_settings,
    check_writable_dir,
    from_args,
    guarded,
    run_folder,
    run_metadata,
)
from utils.data.classnames import CIFAR100, parse_labels
from utils.data.skimage import SKIMAGE_IMAGES, skimage_images
from utils.data.splits import DataOptions
from utils.device import autocast, resolve_device
from utils.errors import UserError
from utils.evaluation.classification import classification_report, logits_of
from utils.features.store import FeatureCache
from utils.features.text import text_embeddings
from utils.models.checkpoint import class_templates, read_checkpoint
from utils.models.logits import zero_shot_logit_scale
from utils.prompts import AS_IS, TEMPLATE_SETS
from utils.scores.logistic_regression import fit_linear_probe
from utils.training.checkpoints import save_checkpoint
from utils.training.image_classifier import HEAD_LR, FinetuneConfig, finetune_image_encoder, predict
from utils.training.loop import EPOCHS, LR, WARMUP, WEIGHT_DECAY
from utils.training.towers import kept_frozen

if TYPE_CHECKING:
    from utils.data.splits import LoadedDataset
    from utils.models.checkpoint import Checkpoint
    from utils.models.loading import ModelBundle
    from utils.prompts import Template

# torchvision, open_clip and matplotlib are imported where used: --help imports torch alone (the fine-tuning
# settings' owners are torch modules).

MODES = ("zeroshot", "linear_probe", "skimage")
FINETUNE = (EPOCHS, LR, HEAD_LR, WEIGHT_DECAY, WARMUP)  # --finetune's settings (the image encoder's learning rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default="zeroshot", help="what to run (default: zeroshot)")
    parser.add_argument(
        "--in",
        dest="id_name",
        default="cifar10",
        help="dataset for zeroshot and linear_probe: a registry name or folder:PATH (default: cifar10)",
    )
    parser.add_argument("--test-labels", default=None, metavar="LABELS",
                        help="zeroshot: class names to use instead of the dataset's, a comma list or a file with one "
                             "per line, in the dataset's class order")  # fmt: skip
    parser.add_argument("--templates", default=None,
                        help=f"prompt templates: {' | '.join(TEMPLATE_SETS)} | a file (default: the --ckpt's learned "
                             "prompts (coop, locoop), else single)")  # fmt: skip
    parser.add_argument(
        "--images",
        nargs="+",
        default=None,
        choices=list(SKIMAGE_IMAGES),
        metavar="NAME",
        help=f"skimage: which images (default: all of {', '.join(SKIMAGE_IMAGES)})",
    )
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="linear_probe: fine-tune the image encoder end to end with a linear head instead of a frozen probe",
    )
    add_settings(parser, {s.name: (s, []) for s in FINETUNE}, "linear_probe --finetune (AdamW)")
    parser.add_argument("--out-dir", default=None, help="results folder (default: results/play_with_clip/...)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out-dir even if it holds results")
    add_model_args(parser)
    add_data_args(parser)
    return parser


def _load(args: argparse.Namespace, checkpoint: Checkpoint | None) -> ModelBundle:
    from utils.models.loading import load_model

    return load_model(
        args.model, args.pretrained, checkpoint, resolve_device(args.device), args.model_cache_dir, args.seed
    )


def _data(args: argparse.Namespace, split: str) -> LoadedDataset:
    options = from_args(DataOptions, args, root=args.data_root)
    data = options.load_id_train(args.id_name) if split == "train" else options.load(args.id_name, split)
    if not data.classnames:
        raise UserError(f"'{args.id_name}' has no class names (a flat folder?); {args.mode} needs labelled images")
    for note in data.notes:
        print(f"note: {note}", file=sys.stderr)
    return data


def _needs_text(bundle: ModelBundle, mode: str) -> None:
    if not bundle.has_text:
        raise UserError(f"--mode {mode} compares images with text; {bundle.name} has no text encoder")


def _templates(args: argparse.Namespace, checkpoint: Checkpoint | None) -> tuple[Template, ...]:
    return class_templates(args.templates, checkpoint.contract if checkpoint else None)


def _folder(args: argparse.Namespace) -> Path:
    label = "skimage" if args.mode == "skimage" else f"{args.mode}-{args.id_name}".replace("/", "_").replace(":", "_")
    owned = ("results.json", "*.png", "final.pt")  # what the modes write
    return run_folder(args.out_dir, ["play_with_clip", label, args.model.replace(":", "_")], args.overwrite, owned)


def run_zeroshot(args: argparse.Namespace, checkpoint: Checkpoint | None) -> dict[str, Any]:
    from utils.features.images import image_features
    from utils.plots import save_figure
    from utils.plots.classification import confusion_matrix_figure

    templates = _templates(args, checkpoint)
    data = _data(args, "test")
    names = list(data.classnames)
    if args.test_labels is not None:
        names = parse_labels(args.test_labels, "--test-labels")
        if len(names) != len(data.classnames):
            raise UserError(f"--test-labels has {len(names)} labels but {args.id_name} has {len(data.classnames)} "
                            f"classes; give one label per class, in the dataset's class order")  # fmt: skip
    if len(names) < 2:
        raise UserError(f"'{args.id_name}' has one class: zero-shot classification among one label is 100% correct "
                        f"whatever the model does; use a set of several classes")  # fmt: skip
    bundle = _load(args, checkpoint)
    _needs_text(bundle, args.mode)
    cache = FeatureCache(args.cache_dir, args.feature_dtype)
    text = text_embeddings(bundle, names, templates)
    feats = image_features(bundle, data, cache, args.batch_size, args.workers)
    report = classification_report(logits_of(feats.features, text), feats.labels, names)
    results = {"top1": report["top1"], "top5": report["top5"], "per_class": report["per_class"], "classnames": names,
               "samples": len(feats.labels)}  # fmt: skip
    print(f"zero-shot on {args.id_name} ({len(feats.labels)} images, {len(names)} classes): "
          f"top-1 {100 * results['top1']:.2f}%, top-5 {100 * results['top5']:.2f}%")  # fmt: skip
    worst = sorted(report["per_class"].items(), key=lambda kv: kv[1])[:5]
    print("hardest classes: " + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in worst))
    folder = _folder(args)
    save_figure(confusion_matrix_figure(report["confusion"], names, f"zero-shot {args.id_name}, {args.model}"),
                folder / "confusion_matrix.png")  # fmt: skip
    return _save(folder, args, results, bundle)


def run_linear_probe(args: argparse.Namespace, checkpoint: Checkpoint | None) -> dict[str, Any]:
    from utils.features.images import image_features
    from utils.plots import save_figure
    from utils.plots.classification import confusion_matrix_figure

    train, test = _data(args, "train"), _data(args, "test")
    bundle = _load(args, checkpoint)
    if args.finetune:
        return _finetune(args, bundle, train, test, _templates(args, checkpoint))
    cache = FeatureCache(args.cache_dir, args.feature_dtype)
    with kept_frozen(bundle.model, "all"):  # the frozen protocol's sanity check (MoCo's)
        train_feats = image_features(bundle, train, cache, args.batch_size, args.workers)
        test_feats = image_features(bundle, test, cache, args.batch_size, args.workers)
        probe = fit_linear_probe(train_feats.features, train_feats.labels, seed=args.seed, device=bundle.device)
    report = classification_report(probe.logits(test_feats.features), test_feats.labels, list(test.classnames))
    results = {"accuracy": report["top1"], "C": probe.C, "validation_accuracy": probe.validation_accuracy,
               "per_class": report["per_class"], "frozen": True, "samples": len(test_feats.labels)}  # fmt: skip
    print(f"frozen linear probe on {args.id_name}: test accuracy {100 * results['accuracy']:.2f}% (C = {probe.C:g}, "
          f"held-out accuracy {100 * probe.validation_accuracy:.2f}%)")  # fmt: skip
    folder = _folder(args)
    save_figure(confusion_matrix_figure(report["confusion"], list(test.classnames), f"linear probe {args.id_name}"),
                folder / "confusion_matrix.png")  # fmt: skip
    return _save(folder, args, results, bundle)


def _finetune(args: argparse.Namespace, bundle: ModelBundle, train: LoadedDataset, test: LoadedDataset,
              templates: tuple[Template, ...]) -> dict:  # fmt: skip
    from utils.plots import save_figure
    from utils.plots.classification import confusion_matrix_figure

    config = from_args(FinetuneConfig, args)
    head = None
    if bundle.has_text:  # start the head at the zero-shot classifier: the usual, stable start for CLIP
        head = torch.from_numpy(text_embeddings(bundle, train.classnames, templates))
    try:
        result = finetune_image_encoder(bundle, train, config, head)
    except ValueError as err:
        raise UserError(str(err)) from err
    logits, labels = predict(result.classifier, test, bundle, args.batch_size, args.workers)
    report = classification_report(logits, labels, list(test.classnames))
    folder = _folder(args)
    checkpoint = folder / "final.pt"
    save_checkpoint(checkpoint, bundle.model.state_dict(), head_weight=result.classifier.head.weight.detach().cpu(),
                    head_bias=result.classifier.head.bias.detach().cpu(), classnames=list(train.classnames),
                    model=args.model, base_weights=bundle.weights, method="linear_probe_finetune",
                    epochs=args.epochs, accuracy=report["top1"])  # fmt: skip
    results = {"accuracy": report["top1"], "frozen": False, "losses": result.losses, "per_class": report["per_class"],
               "checkpoint": str(checkpoint), "samples": len(labels)}  # fmt: skip
    print(
        f"fine-tuned image encoder on {args.id_name}: test accuracy {100 * results['accuracy']:.2f}% after "
        f"{args.epochs} epochs (loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}); checkpoint {checkpoint}"
    )
    save_figure(confusion_matrix_figure(report["confusion"], list(test.classnames), f"fine-tuned {args.id_name}"),
                folder / "confusion_matrix.png")  # fmt: skip
    return _save(folder, args, results, bundle)


@torch.no_grad()
def run_skimage(args: argparse.Namespace, checkpoint: Checkpoint | None) -> dict[str, Any]:
    from utils.features.images import DEFAULT_VIEW, VIEWS
    from utils.plots import save_figure
    from utils.plots.classification import similarity_heatmap, top_labels_figure

    names, images, descriptions = skimage_images(args.images)
    bundle = _load(args, checkpoint)
    _needs_text(bundle, args.mode)
    batch = torch.stack([bundle.preprocess(image) for image in images]).to(bundle.device)
    with autocast(bundle.device):
        image_feats = VIEWS[DEFAULT_VIEW].encode(bundle, batch)
    image_feats = torch.nn.functional.normalize(image_feats.float(), dim=-1).flatten(1).cpu().numpy()  # one token
    similarity = image_feats @ text_embeddings(bundle, descriptions, AS_IS).T
    head = text_embeddings(bundle, CIFAR100, _templates(args, checkpoint))
    scale = zero_shot_logit_scale(bundle.model)  # 100 for CLIP, a SigLIP model's own; a bias: no change
    probabilities = torch.softmax(torch.from_numpy(scale * image_feats @ head.T), dim=1).numpy()
    top5 = {
        name: [(CIFAR100[k], float(p[k])) for k in np.argsort(-p)[:5]]
        for name, p in zip(names, probabilities, strict=True)
    }
    print(f"{'image':<12} {'best description':<56} top CIFAR-100 label")
    for row, name in enumerate(names):
        label, prob = top5[name][0]
        print(f"{name:<12} {descriptions[int(similarity[row].argmax())][:55]:<56} {label} ({100 * prob:.1f}%)")
    folder = _folder(args)
    save_figure(similarity_heatmap(similarity, images, descriptions, f"cosine similarity, {args.model}"),
                folder / "similarity.png")  # fmt: skip
    save_figure(top_labels_figure(images, names, list(top5.values()), "top-5 CIFAR-100 labels"), folder / "top5.png")
    results = {"images": names, "descriptions": descriptions, "similarity": similarity.tolist(), "top5": top5}
    return _save(folder, args, results, bundle)


def _save(folder: Path, args: argparse.Namespace, results: dict[str, Any], bundle: ModelBundle) -> dict[str, Any]:
    write_json(folder / "results.json", {"mode": args.mode, **results, **run_metadata(args),
                                         "model_weights": bundle.weights})  # fmt: skip
    print(f"saved results.json and figures in {folder}")
    return {**results, "out_dir": str(folder)}


RUNNERS: dict[str, Callable[[argparse.Namespace, Checkpoint | None], dict[str, Any]]] = {
    "zeroshot": run_zeroshot,
    "linear_probe": run_linear_probe,
    "skimage": run_skimage,
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    for setting in FINETUNE:  # values set from Python (the functions below) are checked as their flags check them
        try:
            setting.parse(str(getattr(args, setting.name)))
        except ValueError as err:
            raise UserError(str(err)) from err
    from utils.models.loading import check_model_name

    check_model_name(args.model)
    check_writable_dir(args.cache_dir, "--cache-dir")
    check_writable_dir(args.out_dir or "results", "--out-dir" if args.out_dir else "the default results folder")
    return RUNNERS[args.mode](args, read_checkpoint(args.ckpt))


def _from_python(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run a mode with keyword options named like the flags (`batch_size`, `pretrained`, `id_name`, ...)."""
    args = build_parser().parse_args(["--mode", mode])
    unknown = sorted(k for k in options if not hasattr(args, k))
    if unknown:
        raise TypeError(f"unknown options {unknown}; use the command-line flag names with _ for -")
    for key, value in options.items():
        setattr(args, key, value)
    return run(args)


def zero_shot_evaluation_CLIP(
    image_dataset_name: str, test_labels: str | Sequence[str] | None = None, ckpt: str | None = None, **options: Any
) -> dict[str, Any]:
    """Zero-shot top-1/top-5/per-class accuracy of CLIP on a dataset, optionally with other class wording."""
    return _from_python(
        "zeroshot", {"id_name": image_dataset_name, "test_labels": test_labels, "ckpt": ckpt, **options}
    )


def linear_probe_evaluation_CLIP(image_dataset_name: str, **options: Any) -> dict[str, Any]:
    """A frozen linear probe (or, with finetune=True, end-to-end fine-tuning of the image encoder)."""
    return _from_python("linear_probe", {"id_name": image_dataset_name, **options})


def play_with_skimage(**options: Any) -> dict[str, Any]:
    """Image x description similarities and top-5 CIFAR-100 labels for scikit-image's sample images."""
    return _from_python("skimage", options)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return guarded(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

"""Build ImageNet-10 (or ImageNet-20 / ImageNet-100) from an ImageNet-1k tree, with a manifest and captions.

    python make_imagenet10.py --imagenet-root /data/imagenet --out data/imagenet10
    python make_imagenet10.py --imagenet-root /data/imagenet --out data/imagenet10_mcm --variant mcm
    python make_imagenet10.py --imagenet-root /data/imagenet --out data/imagenet20 --subset imagenet20

Writes OUT/train/<wnid>/, OUT/val/<wnid>/ (symlinks, or copies with --copy), OUT/manifest.csv and
OUT/captions.jsonl. The source tree is never modified; a rerun finishes what is missing and leaves the rest.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from utils.cli import check_writable_dir, guarded
from utils.data.imagenet_subsets import (
    SPLITS,
    caption_records,
    find_images,
    place,
    subset_classes,
    write_jsonl,
    write_manifest,
)
from utils.errors import UserError
from utils.prompts import TEMPLATE_SETS, load_templates
from utils.settings import non_negative_int, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imagenet-root", required=True, help="ImageNet-1k with train/<wnid>/ and val/ folders")
    parser.add_argument("--out", required=True, help="the new dataset's folder (e.g. data/imagenet10)")
    parser.add_argument("--subset", choices=["imagenet10", "imagenet20", "imagenet100"], default="imagenet10",
                        help="which subset (default: imagenet10)")  # fmt: skip
    parser.add_argument(
        "--variant",
        choices=["seed", "mcm"],
        default="seed",
        help="imagenet10: the project notes' list (seed) or the published MCM list with horse (mcm)",
    )
    parser.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    parser.add_argument(
        "--val-labels",
        default=None,
        help="labels of a flat val/ folder: Kaggle's LOC_val_solution.csv (default: look in the root)",
    )
    parser.add_argument(
        "--templates",
        default="ensemble",
        help=f"caption templates: {' | '.join(TEMPLATE_SETS)} | a file (default: ensemble)",
    )
    parser.add_argument("--captions-per-image", type=positive_int, default=1, help="captions per image (default: 1)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="caption sampling seed (default: 0)")
    parser.add_argument("--captioner", default=None,
                        help="a Hugging Face image-captioning model (e.g. Salesforce/blip-image-captioning-base) to "
                             "caption each training image; needs the transformers package")  # fmt: skip
    return parser


def _captioner(name: str):
    if importlib.util.find_spec("transformers") is None:
        raise UserError(f"--captioner {name} needs the transformers package: pip install transformers")
    from transformers import pipeline

    return pipeline("image-to-text", model=name)


def run(args: argparse.Namespace) -> dict:
    source, out = Path(args.imagenet_root).expanduser(), Path(args.out).expanduser()
    if not source.is_dir():
        raise UserError(f"--imagenet-root {source} is not a folder")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise UserError(f"--out {out} lies inside the source tree {source}, which is never modified")
    check_writable_dir(out, "--out")
    classes = subset_classes(args.subset, args.variant)
    templates = load_templates(args.templates)
    captioner = _captioner(args.captioner) if args.captioner else None
    labels = Path(args.val_labels) if args.val_labels else None
    images = {split: find_images(source, split, sorted(classes), labels) for split in SPLITS}  # all checks first
    made, count = 0, sum(len(files) for split in SPLITS for files in images[split].values())
    with tqdm(total=count, desc=f"{'copying' if args.copy else 'linking'} images", unit="img") as bar:
        for split in SPLITS:
            for wnid, files in images[split].items():
                made += sum(place(f, out / split / wnid / f.name, args.copy) for f in files)
                bar.update(len(files))
    counts = {split: {w: len(files) for w, files in images[split].items()} for split in SPLITS}
    write_manifest(out / "manifest.csv", classes, counts)
    records = caption_records(images["train"], classes, templates, args.captions_per_image, args.seed)
    if captioner is not None:
        for record in tqdm(records, desc=f"captioning with {args.captioner}", unit="img"):
            record["captions"].append(captioner(str(out / record["image"]))[0]["generated_text"])
    write_jsonl(out / "captions.jsonl", records)
    total = sum(sum(c.values()) for c in counts.values())
    print(f"{args.subset} ({args.variant}): {len(classes)} classes, {sum(counts['train'].values())} train and "
          f"{sum(counts['val'].values())} val images in {out} ({made} new {'copies' if args.copy else 'links'}, "
          f"{total - made} already there); manifest.csv and captions.jsonl written")  # fmt: skip
    return {"classes": len(classes), "counts": counts, "made": made, "out": str(out)}


def main(argv: Sequence[str] | None = None) -> dict:
    return guarded(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

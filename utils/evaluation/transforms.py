"""Model transforms (--transform): a change to the loaded model's weights, made before any image is encoded.

A transform is declared here with its paper and its settings (so --help and presets know them without torch); its
`runner` ("module:function") is imported only when a run uses it. After a transform the model's fingerprint is taken
again, so every cache entry (image and text features) keys on the weights that actually encode.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import UserError
from utils.settings import Setting, collect, non_negative_float, positive_int, share

if TYPE_CHECKING:
    from utils.data.splits import LoadedDataset
    from utils.models.loading import ModelBundle
    from utils.prompts import Template

SETAR_RATIO_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
SETAR_CONFIG = "SeTAR's configs/training_free/clip_base/ID_ImageNet/SeTAR.json (X1AOX1A/SeTAR 1564daa)"
SETAR_LAMBDA = Setting(
    "setar_lambda", 0.1, "weight of the OOD patches' entropy in SeTAR's search loss", f"{SETAR_CONFIG}: locoop_lambda "
    "0.1 for ViT-B/16 on ImageNet-1k", type=non_negative_float,
)  # fmt: skip
SETAR_TOP_K = Setting(
    "setar_top_k", None, "in SeTAR's search loss a patch is OOD when its top-K classes miss the label",
    f"{SETAR_CONFIG}: locoop_top_k 300 of 1000 classes", type=positive_int, metavar="K",
    default_text="30% of the classes, within [1, classes - 1]",
)  # fmt: skip
SETAR_RATIOS = Setting(
    "setar_ratios", list(SETAR_RATIO_GRID), "the shares of a matrix's smallest singular values SeTAR may drop (0 "
    "first: keep it)", f"{SETAR_CONFIG}: candi_ratios", type=share, nargs="+", metavar="R",
)  # fmt: skip
SETAR_SHOTS = Setting(
    "setar_shots", None, "ID train images per class (seeded) that SeTAR's search scores",
    "SeTAR's data/README.md: one ImageNet train image per class", type=positive_int, metavar="K", default_text="1",
)  # fmt: skip
SETAR_IMAGES = Setting(
    "setar_images", None, "SeTAR's search images as a file, one train file per line (a name, or wnid/name), instead "
    "of the seeded draw; `imagenet1k`: the release's 1,000 (configs/setar/imagenet1k_search.txt)", "toolkit",
    metavar="FILE", default_text="--setar-shots seeded images per class",
)  # fmt: skip
SETAR_BATCH = Setting(
    "setar_batch", 512, "images per batch of SeTAR's search loss (the entropy pools a batch's OOD patches, so it "
    "moves the loss)", f"{SETAR_CONFIG}: batch_size 512", type=positive_int, metavar="N",
)  # fmt: skip


@dataclass(frozen=True)
class Transform:
    """A registered model transform: its paper, its settings and where its code lives."""

    paper: str
    settings: tuple[Setting, ...]
    runner: str  # "module:function", called as function(bundle, context, **settings): changes bundle.model in
    # place and returns what results.json records of it
    needs_train: bool = False  # it reads the ID train split

    def run(self) -> Callable[..., Any]:
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


TRANSFORMS: dict[str, Transform] = {
    "setar": Transform(
        "SeTAR (Li et al., NeurIPS 2024): each MLP up-projection of both towers cut to its top singular directions, "
        "ranks chosen greedily on ID train images by LoCoOp's loss",
        (SETAR_LAMBDA, SETAR_TOP_K, SETAR_RATIOS, SETAR_SHOTS, SETAR_IMAGES, SETAR_BATCH),
        "utils.evaluation.setar_search:setar",
        needs_train=True,
    ),
}


def transform_settings() -> dict[str, tuple[Setting, list[str]]]:
    """Every transform's settings, with the transforms that read them (the flags of eval_ood_detection.py)."""
    return collect((name, transform.settings) for name, transform in TRANSFORMS.items())


def get_transform(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise UserError(f"unknown model transform '{name}'; known: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]


@dataclass
class TransformContext:
    """What a transform may read from the run."""

    id_train: LoadedDataset | None
    classnames: tuple[str, ...]
    templates: tuple[Template, ...]
    seed: int
    workers: int
    cache_root: Path
    notes: list[str] = field(default_factory=list)  # what the run should say about it


def apply_transform(name: str, bundle: ModelBundle, context: TransformContext, settings: dict[str, Any],
                    ) -> tuple[ModelBundle, dict[str, Any]]:  # fmt: skip
    """The transformed model, fingerprinted again (every cache keys on the new weights), and its record."""
    from utils.models.weights import fingerprint

    transform = get_transform(name)
    own = {s.name: settings[s.name] for s in transform.settings}
    record = transform.run()(bundle, context, **own)
    bundle = replace(bundle, fingerprint=fingerprint(bundle.model), weights=f"{bundle.weights} + {name}")
    return bundle, {"name": name, "paper": transform.paper, "settings": own, **record}


def check_settings(name: str | None, given: set[str]) -> None:
    """A transform's setting written on the command line without its transform is an error, not a no-op."""
    readers = transform_settings()
    for setting, (declared, owners) in readers.items():
        if setting in given and name not in owners:
            raise UserError(f"{declared.flag} only applies with --transform {' or '.join(owners)}")

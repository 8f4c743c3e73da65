"""SeTAR's search (--transform setar) in an evaluation: its images and prompts from the run, its result cached.

It searches on ID *train* images (the release: one ImageNet train image per class), never on a test split: a
seeded draw of --setar-shots per class, or the files a list names (the release's own list ships in configs/setar/).
The search's result is kept in the feature cache under everything that decides it, written atomically; a damaged
entry is searched again, with a note.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from utils.atomic import write_json
from utils.data.loaders import make_loader, sample_name
from utils.data.splits import LoadedDataset, dataset_identity, few_shot, labels_of
from utils.errors import Missing, UserError
from utils.evaluation.transforms import TransformContext
from utils.features.images import describe_transform
from utils.features.store import cache_key
from utils.models.loading import ModelBundle
from utils.prompts import render

CACHE_FOLDER = "transforms"
SEARCH_VERSION = 1  # in the cache key: a change to how the search computes makes earlier entries stale
RELEASE_LISTS = {"imagenet1k": Path(__file__).parents[2] / "configs" / "setar" / "imagenet1k_search.txt"}


def _prompts(context: TransformContext) -> list[str]:
    templates = context.templates
    if len(templates) == 1 and isinstance(templates[0], str):
        return [render(templates, name)[0] for name in context.classnames]
    given = "a learned context (a --ckpt of coop or locoop)" if len(templates) == 1 else f"{len(templates)} templates"
    raise UserError(f"SeTAR's search encodes one text prompt per class (the release: 'a photo of a {{}}'); the run's "
                    f"class prompts are {given}: pass one with --templates, e.g. --templates mcm")  # fmt: skip


def search_images(train: LoadedDataset, shots: int, seed: int, names_file: str | None) -> tuple[Subset, str]:
    """The search's ID train images and how they were picked: the files `names_file` lists (one per line: a file
    name, or the end of its path where names repeat across classes), else `shots` seeded images per class."""
    if names_file is None:
        return few_shot(train.dataset, shots, seed), f"{shots} per class of {train.name} train, seed {seed}"
    path = RELEASE_LISTS.get(names_file, Path(names_file))
    if not path.is_file():
        raise Missing(f"--setar-images {names_file}: no such file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    wanted = [line for line in lines if line and not line.startswith("#")]  # "#": a comment line
    by_name: dict[str, list[tuple[str, int]]] = {}
    for i in range(len(train.dataset)):
        file = sample_name(train.dataset, i).replace("\\", "/")
        by_name.setdefault(file.rpartition("/")[2], []).append((file, i))
    picked, missing, ambiguous = [], [], []
    for entry in wanted:
        found = [i for file, i in by_name.get(entry.rpartition("/")[2], []) if f"/{file}".endswith(f"/{entry}")]
        if len(found) == 1:
            picked.append(found[0])
        else:
            (ambiguous if found else missing).append(entry)
    if missing or ambiguous:
        what = f"{len(missing)} are not in {train.name} train" if missing else f"{len(ambiguous)} name several files"
        raise UserError(f"--setar-images {names_file}: of its {len(wanted)} entries {what} (e.g. "
                        f"{(missing or ambiguous)[0]}; an entry is a file name or the end of a path, e.g. "
                        f"n01440764/n01440764_10026.JPEG)")  # fmt: skip
    return Subset(train.dataset, sorted(set(picked))), f"the {len(set(picked))} files of {path}"


def _load(bundle: ModelBundle, images: Subset, batch: int, workers: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The images preprocessed as the evaluation's (the model's transform), kept on the CPU; unreadable ones left out
    and named."""
    tensors, labels, failed = [], [], []
    for part in make_loader(images, bundle.preprocess, batch, workers):
        failed += [sample_name(images, index) for index, _ in part.failures]
        if part.images is not None:
            tensors.append(part.images)
            labels.append(part.labels)
    if not tensors:
        raise UserError("none of SeTAR's search images could be read")
    return torch.cat(tensors), torch.cat(labels), failed


def _cached(path: Path, context: TransformContext) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if isinstance(record.get("ratios"), dict) and isinstance(record.get("steps"), list):
            return record
    except (OSError, ValueError):
        pass
    context.notes.append(f"SeTAR: the cached search {path} was damaged; searched again")
    return None


def _key(bundle: ModelBundle, context: TransformContext, images: Subset, prompts: list[str],
         settings: dict[str, Any]) -> str:  # fmt: skip
    """Everything that decides the search's result: weights, images and their preprocessing, prompts, settings."""
    return cache_key({"transform": "setar", "version": SEARCH_VERSION, "model": bundle.name,
                      "architecture": bundle.architecture, "weights": bundle.fingerprint,
                      "images": f"{context.id_train.identity}|{dataset_identity(images)}",
                      "preprocess": describe_transform(bundle.preprocess),
                      "prompts": hashlib.blake2b("\n".join(prompts).encode(), digest_size=16).hexdigest(),
                      **settings})  # fmt: skip


def _search(bundle: ModelBundle, context: TransformContext, images: Subset, prompts: list[str], picked: str,
            settings: dict[str, Any], path: Path) -> dict[str, Any]:  # fmt: skip
    """The search, run; cached at `path` only if every image was read (a partial search is never reused)."""
    from utils.models import setar as low_rank

    tensors, labels, failed = _load(bundle, images, settings["batch"], context.workers)
    print(f"SeTAR: searching {len(low_rank.up_projections(bundle.model))} matrices x {len(settings['ratios'])} "
          f"ratios on {len(tensors)} images ({picked})")  # fmt: skip
    result = low_rank.search(bundle, tensors, labels, prompts, settings["lambda"], settings["top_k"],
                             settings["ratios"], settings["batch"])  # fmt: skip
    record = {**result.record(), "unreadable": failed, "searched_on": bundle.device.type}
    if failed:
        context.notes.append(f"SeTAR: {len(failed)} search images could not be read and were left out (e.g. "
                             f"{failed[0]}); the search is not cached")  # fmt: skip
    else:
        write_json(path, record)
    return record


def setar(bundle: ModelBundle, context: TransformContext, setar_lambda: float, setar_top_k: int | None,
          setar_ratios: list[float], setar_shots: int | None, setar_images: str | None,
          setar_batch: int) -> dict[str, Any]:  # fmt: skip
    """SeTAR's search on ID train images (cached), its ratios put into `bundle.model`; the record for results.json."""
    from utils.models import setar as low_rank

    train = context.id_train
    if train is None:
        raise UserError("SeTAR searches on the ID set's train split, and this run has none")
    if train.classnames is not None and tuple(train.classnames) != tuple(context.classnames):
        raise UserError(f"SeTAR's search labels {train.name} train images by its classes, which differ from the test "
                        f"split's ({len(train.classnames)} vs {len(context.classnames)} names)")  # fmt: skip
    if setar_images is not None and setar_shots is not None:
        raise UserError("--setar-shots and --setar-images both choose SeTAR's search images: give one of them")
    prompts, ratios = _prompts(context), low_rank.check_ratios(setar_ratios)
    low_rank.check_keeps_some(bundle.model, ratios)
    top_k = low_rank.top_k_for(len(prompts), setar_top_k)
    images, picked = search_images(train, setar_shots or 1, context.seed, setar_images)
    settings = {"lambda": setar_lambda, "top_k": top_k, "ratios": ratios, "batch": setar_batch}
    path = context.cache_root / CACHE_FOLDER / f"setar-{_key(bundle, context, images, prompts, settings)}.json"
    source = {"images": picked, "image_count": len(images), "classes_covered": len(np.unique(labels_of(images))),
              "top_k": top_k}  # fmt: skip
    if source["classes_covered"] < len(prompts):
        context.notes.append(f"SeTAR: the search images cover {source['classes_covered']} of the {len(prompts)} ID "
                             f"classes (a --limit or a short train split); it never sees the others")  # fmt: skip
    found = _cached(path, context)
    if found is None:
        return {**source, **_search(bundle, context, images, prompts, picked, settings, path), "from_cache": None}
    low_rank.apply_ratios(bundle.model, found["ratios"])
    if found.get("searched_on") not in (None, bundle.device.type):
        context.notes.append(f"SeTAR: the cached search ran on {found['searched_on']}, this run on "
                             f"{bundle.device.type} (a near tie between ratios may fall the other way)")  # fmt: skip
    return {**source, **found, "from_cache": str(path)}

"""OpenOOD v1.5's benchmarks as registry entries: its image lists, read and downloaded through pytorch-ood.

Every split is one of OpenOOD's `benchmark_imglist` files ("relative/path label", OOD label -1), so membership and
order are OpenOOD's exactly. The lists come from `<data-root>/openood/benchmark_imglist/` (OpenOOD's own data
folder) or pytorch-ood's cache under torch.hub (downloaded once with gdown). The images resolve against OpenOOD's
`images_classic/` / `images_largescale/` where those exist, else against `<data-root>/openood/` itself (the
layout pytorch-ood downloads into); ImageNet-1k's own images may come from `<data-root>/imagenet/` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from utils.atomic import fetch_whole
from utils.data import classnames as names
from utils.data.folder import ImageFiles
from utils.errors import UserError

HOME = "openood"  # under --data-root
LISTS = "benchmark_imglist"
SOURCE = ("OpenOOD v1.5 (github.com/Jingkang50/OpenOOD, scripts/download/download.py): its benchmark_imglist "
          "and image archives; with --download and `pip install gdown`, pytorch-ood fetches them")  # fmt: skip
IMAGENET_1K = "imagenet_1k"  # OpenOOD's folder of ImageNet-1k, never downloaded (not redistributable)


@dataclass(frozen=True)
class Benchmark:
    """One OpenOOD v1.5 benchmark: its imglist folder, image folder, OOD sets in near/far order and val OOD set.

    The ID lists are {split}_{lists}.txt, an OOD set's {split}_{set}.txt (OpenOOD's DATA_INFO keys, e.g.
    test_ssb_hard.txt); `pood` names pytorch-ood's class for the same benchmark (a test compares the two).
    """

    lists: str
    pood: str
    images: str  # images_classic (CIFAR) or images_largescale (ImageNet, whose textures stay in images_classic)
    near: tuple[str, ...]
    far: tuple[str, ...]
    val_ood: str  # the OOD set whose val list OpenOOD tunes on
    knn_k: int = 50
    csid: dict[str, str] = field(default_factory=dict)  # covariate-shifted ID sets (FSOOD) -> test list, ID labels

    def list_name(self, dataset: str | None, split: str) -> str:
        return self.csid.get(dataset) or f"{split}_{dataset or self.lists}.txt"

    def image_folder(self, dataset: str | None) -> str:
        return "images_classic" if dataset in CLASSIC_IN_LARGESCALE else self.images


CLASSIC_IN_LARGESCALE = {"textures"}  # OpenOOD's DATA_INFO: ImageNet's textures resolve against images_classic/
_CIFAR_FAR = ("mnist", "svhn", "texture", "places365")
_IMAGENET_NEAR, _IMAGENET_FAR = ("ssb_hard", "ninco"), ("inaturalist", "textures", "openimage_o")
BENCHMARKS = {
    "openood_cifar10": Benchmark("cifar10", "CIFAR10_OpenOOD", "images_classic", ("cifar100", "tin"), _CIFAR_FAR,
                                 "tin"),
    "openood_cifar100": Benchmark("cifar100", "CIFAR100_OpenOOD", "images_classic", ("cifar10", "tin"), _CIFAR_FAR,
                                  "tin"),
    "openood_imagenet200": Benchmark("imagenet200", "ImageNet200_OpenOOD", "images_largescale", _IMAGENET_NEAR,
                                     _IMAGENET_FAR, "openimage_o",
                                     csid={f"imagenet_{s}": f"test_imagenet200_{s}.txt" for s in ("v2", "c", "r")}),
    "openood_imagenet": Benchmark("imagenet", "ImageNet_OpenOOD", "images_largescale", _IMAGENET_NEAR,
                                  _IMAGENET_FAR, "openimage_o", knn_k=1000,
                                  csid={f"imagenet_{s}": f"test_imagenet_{s}.txt" for s in ("v2", "c", "r", "es")}),
}  # fmt: skip


# OpenOOD's sets whose images come from a set the registry also holds under another name
FAMILIES = {"texture": "textures", "textures": "textures", "places365": "places365", "inaturalist": "inaturalist"}


def ood_name(benchmark: str, dataset: str) -> str:
    """The registry name of one of a benchmark's OOD sets: openood_imagenet:ssb_hard."""
    return f"{benchmark}:{dataset}"


def short_name(name: str) -> str:
    """OpenOOD's own name of a registry set (openood_imagenet:ssb_hard -> ssb_hard); other names unchanged."""
    prefix, sep, dataset = name.partition(":")
    return dataset if sep and prefix in BENCHMARKS else name


def list_file(home: Path, bench: Benchmark, dataset: str | None, split: str, download: bool) -> Path:
    """The imglist of one split: OpenOOD's data folder first, then pytorch-ood's cache (downloaded if allowed)."""
    local = home / LISTS / bench.lists
    if not local.is_dir():
        local = _pood_lists(download) / bench.lists
    path = local / bench.list_name(dataset, split)
    if not path.is_file():  # pytorch-ood extracts into its cache in place: an interrupted download stays partial
        raise UserError(f"OpenOOD's image list {path.name} is missing from {path.parent}: that benchmark_imglist "
                        f"folder is incomplete; delete {local.parent} and get it again")  # fmt: skip
    return path


def _pood_lists(download: bool) -> Path:
    import torch

    cache = Path(torch.hub.get_dir()) / "openood_benchmark_imglist" / LISTS
    if not download and not (cache.is_dir() and any(cache.iterdir())):
        raise UserError(f"OpenOOD's image lists (benchmark_imglist/) are neither in --data-root's {HOME}/{LISTS} "
                        f"nor in pytorch-ood's cache {cache}; allow --download (needs `pip install gdown`) or "
                        f"place OpenOOD's benchmark_imglist/ folder in one of them")  # fmt: skip
    from pytorch_ood.benchmark.img.openood import _ensure_imglists  # pytorch-ood's cache and gdown download

    return Path(_ensure_imglists(download))


@lru_cache(maxsize=16)
def read_list(path: Path) -> tuple[tuple[str, int], ...]:
    """(relative path, label) per line, in the file's order, parsed by pytorch-ood's ImageListDataset."""
    from pytorch_ood.dataset.img import ImageListDataset

    root = str(path.parent)  # the reader joins every path to a root that must exist; the real one is joined later
    try:
        listed, cut = ImageListDataset(root=root, imglist_path=str(path)), len(os.path.join(root, ""))
    except ValueError as err:  # a label that is not an integer
        raise UserError(f"{path} is not an OpenOOD image list ('relative/path label' per line): {err}") from err
    return tuple((file[cut:], int(label)) for file, label in zip(listed.files, listed.labels, strict=True))


def image_base(home: Path, bench: Benchmark, dataset: str | None) -> Path:
    """Where a set's listed paths resolve: OpenOOD's images_classic/ or images_largescale/ if present, else the
    openood folder itself (pytorch-ood's download layout)."""
    folder = home / bench.image_folder(dataset)
    return folder if folder.is_dir() else home


# OpenOOD's archives of its covariate-shifted ID sets, which pytorch-ood's downloader lacks (Google Drive ids from
# Jingkang50/OpenOOD 3c35632 scripts/download/download.py; imagenet_es has none there)
CSID_ARCHIVES = {"imagenet_v2": "1akg2IiE22HcbvTBpwXQoD7tgfPCdkoho", "imagenet_r": "1EzjMN2gq-bVV7lg-MEAdeuBuz-7jbGYU",
                 "imagenet_c": "1JeXL9YH4BO8gCJ631c5BHbaSsl-lekHt"}  # fmt: skip


def _fetch_csid(name: str, staging: Path) -> None:
    """One of CSID_ARCHIVES into `staging`/`name`/, as OpenOOD's download.py and pytorch-ood unpack theirs."""
    import zipfile

    try:
        import gdown
    except ImportError as err:
        raise UserError(f"downloading OpenOOD's '{name}' needs gdown (pip install gdown), or place it by hand") from err
    archive = staging / f"{name}.zip"
    gdown.download(id=CSID_ARCHIVES[name], output=str(archive), quiet=False)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(staging / name)


def ensure_images(base: Path, entries: Sequence[tuple[str, int]], download: bool) -> None:
    """Download every archive the list needs that is not under `base`, staged beside it and moved in whole: through
    pytorch-ood, or with gdown for the shifted-ID archives it does not know."""
    for top in sorted({rel.split("/", 1)[0] for rel, _ in entries} - {IMAGENET_1K}):
        if (base / top).is_dir():
            continue
        if not download:
            raise UserError(f"{base / top} is missing (--no-download): get OpenOOD's '{top}' archive")
        from pytorch_ood.benchmark.img.openood import _download_openood_dataset

        def fetch(staging: Path, top: str = top) -> None:
            if top in CSID_ARCHIVES:
                _fetch_csid(top, staging)
            else:
                _download_openood_dataset(top, str(staging))

        try:
            fetch_whole(base / top, fetch)
        except UserError:
            raise
        except Exception as err:  # gdown's own errors (a Drive quota page), a bad zip: none is an OSError
            raise UserError(f"downloading OpenOOD's '{top}' failed ({type(err).__name__}: {err}); fetch it with "
                            f"OpenOOD's download.py or by hand into {base / top}") from err  # fmt: skip


def resolve(base: Path, data_root: Path, entries: Sequence[tuple[str, int]]) -> list[tuple[Path, int]]:
    """Absolute paths of `entries`; ImageNet-1k's from `<data-root>/imagenet/` (wnid folders) when OpenOOD's
    flat imagenet_1k/ copy is absent. Every listed image must exist: a partial set is not the benchmark."""
    uses_imagenet = any(rel.startswith(f"{IMAGENET_1K}/") for rel, _ in entries)
    folder_copy = None if (base / IMAGENET_1K).is_dir() or not uses_imagenet else data_root / "imagenet"
    if folder_copy is not None and not folder_copy.is_dir():
        raise UserError(
            f"ImageNet-1k is needed: put it under {base / IMAGENET_1K}/ as OpenOOD does (val/ flat, "
            f"train/<wnid>/) or under {folder_copy}/ as --in imagenet reads it (val/<wnid>/, train/<wnid>/)"
        )
    index = _val_index(folder_copy) if folder_copy else {}
    samples = []
    for rel, label in entries:
        top, _, rest = rel.partition("/")
        if top == IMAGENET_1K and folder_copy is not None:
            split, _, file = rest.partition("/")
            path = index.get(file, folder_copy / "val" / file) if split == "val" else folder_copy / split / file
        else:
            path = base / rel
        samples.append((path, label))
    return samples


def _val_index(folder: Path) -> dict[str, Path]:
    """ILSVRC2012 validation file name -> its path in `folder`/val/<wnid>/ (the registry's imagenet layout)."""
    return {path.name: path for path in (folder / "val").glob("*/*")}


def check_present(samples: Sequence[tuple[Path, int]], label: str) -> None:
    missing = [path for path, _ in samples if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(samples)} images OpenOOD lists for {label} are missing, e.g. "
                        f"{missing[0]}; the benchmark needs every one (get the set again)")  # fmt: skip


CIFAR_NAMES = {"cifar10": names.CIFAR10, "cifar100": names.CIFAR100}  # OpenOOD's label k is CIFAR's class k


def id_classes(bench: Benchmark, train: Callable[[], Sequence[tuple[str, int]]]) -> tuple[list[str], list[str]]:
    """(class ids, class names) of a benchmark's ID labels 0..C-1: CIFAR's own; ImageNet-1k's sorted wnids (the
    torchvision order OpenOOD's lists use); ImageNet-200's wnids read from its `train` list (label k's folder),
    named from the ImageNet-1k table."""
    if bench.lists in CIFAR_NAMES:
        return list(CIFAR_NAMES[bench.lists]), list(CIFAR_NAMES[bench.lists])
    table = names.imagenet1k()
    wnids = sorted(table) if bench.lists == "imagenet" else _wnids_of(bench.lists, train())
    return wnids, [table[w] for w in wnids]


def _wnids_of(lists: str, train: Sequence[tuple[str, int]]) -> list[str]:
    wnid_of: dict[int, str] = {}
    for rel, label in train:  # imagenet_1k/train/<wnid>/<file>
        parts = rel.split("/")
        if len(parts) != 4 or parts[0] != IMAGENET_1K:
            raise UserError(f"OpenOOD's {lists} train list names {rel}, not {IMAGENET_1K}/train/<wnid>/<file>")
        wnid = parts[2]
        if wnid_of.setdefault(label, wnid) != wnid:
            raise UserError(f"OpenOOD's {lists} train list gives label {label} to {wnid_of[label]} and {wnid}")
    if sorted(wnid_of) != list(range(len(wnid_of))):
        raise UserError(f"OpenOOD's {lists} train list's labels are not 0..{len(wnid_of) - 1}")
    return [wnid_of[k] for k in range(len(wnid_of))]


def builder(benchmark: str, dataset: str | None = None):
    """The registry builder of a benchmark's ID set (`dataset` None) or one of its OOD sets."""

    def build(root: Path, split: str, download: bool) -> ImageFiles:
        bench, home = BENCHMARKS[benchmark], Path(root) / HOME
        entries = read_list(list_file(home, bench, dataset, split, download))
        base = image_base(home, bench, dataset)
        ensure_images(base, entries, download)
        samples = resolve(base, Path(root), entries)
        if split != "train":  # 1.28M stat calls for ImageNet's: the loader reports any missing train image
            check_present(samples, f"{ood_name(benchmark, dataset) if dataset else benchmark} ({split})")
        classes: list[str] = []
        classnames = None
        if dataset is None or dataset in bench.csid:  # ID labels: the ID set's classes
            classes, classnames = id_classes(bench, lambda: read_list(list_file(home, bench, None, "train", download)))
            if bad := sorted({label for _, label in samples if not 0 <= label < len(classes)}):
                raise UserError(f"OpenOOD's list {bench.list_name(dataset, split)} has labels {bad[:5]} outside "
                                f"0..{len(classes) - 1}")  # fmt: skip
        else:  # OpenOOD sets every OOD label to -1 whatever the list says
            samples = [(path, -1) for path, _ in samples]
        return ImageFiles.listed(base, samples, classes, classnames)

    return build


def layout(benchmark: str, dataset: str | None) -> str:
    """What must lie under --data-root for one set (the registry's 'expected' line)."""
    bench = BENCHMARKS[benchmark]
    folder = bench.image_folder(dataset)
    what = f"{HOME}/{folder}/<the list's paths>" + (
        f" (ImageNet-1k: {folder}/{IMAGENET_1K}/val/*.JPEG flat, or imagenet/val/<wnid>/)"
        if dataset is None and bench.images == "images_largescale" else ""
    )  # fmt: skip
    return f"{HOME}/{LISTS}/{bench.lists}/{bench.list_name(dataset, 'test')} (or pytorch-ood's cache) and {what}"

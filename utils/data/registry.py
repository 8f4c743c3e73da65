"""The dataset registry: every name `--in` / `--out` accepts, how to build it, and how to get it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


from utils.data import classnames as names
from utils.data import fine_grained, openood, shift, skimage
from utils.data.digits import Digits
from utils.data.folder import ImageFiles
from utils.errors import UserError

if TYPE_CHECKING:
    from torch.utils.data import Dataset  # the datasets are map-style: this module imports no torch

SPLITS = ("train", "test")
FOLDER_PREFIX = "folder:"
Builder = Callable[[Path, str, bool], "Dataset"]  # (data root, split, download) -> (PIL image, label) dataset


@dataclass(frozen=True)
class OODProtocol:
    """How a benchmark prepares its OOD sets when this set is ID (recorded with every result)."""

    resolution: int | None = None  # OOD images resized to resolution x resolution before the model's preprocessing
    per_class: dict[str, int] = field(default_factory=dict)  # OOD set -> its first N images per class (file order)
    source: str = ""


# KNN (Sun et al., ICML 2022; deeplearning-wisc/knn-ood util/data_loader.py, select_svhn_data.py), after ODIN: every
# OOD image through Resize((32, 32)) first, and SVHN's test set cut to its first 1,000 images per class.
CIFAR_PROTOCOL = OODProtocol(resolution=32, per_class={"svhn": 1000}, source="KNN-OOD / ODIN CIFAR protocol")


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset and what to tell a user who lacks it."""

    build: Builder
    source: str  # where to get it
    layout: str  # what must lie under --data-root
    classnames: Sequence[str] | Callable[[], Sequence[str]] | None = None  # None: the dataset's own `.classes`
    class_ids: Callable[[], Sequence[str]] | None = None  # class folders (wnids), for the leakage guard
    splits: tuple[str, ...] = SPLITS
    subset: int | None = None  # a fixed seeded subset of this size, part of the benchmark's definition
    ood: tuple[str, ...] = field(default_factory=tuple)  # default OOD partners when used as ID
    knn_k: int = 50  # KNN's default k (Sun et al. 2022: 50 for CIFAR, 1000 for the full ImageNet-1k train set)
    ood_protocol: OODProtocol = field(default_factory=OODProtocol)  # how its OOD sets are prepared when it is ID
    ood_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # e.g. OpenOOD's nearood/farood: mean rows
    family: str = ""  # the source its images come from, where another entry shares it (openood_cifar10 -> cifar10)


def _torchvision(cls_name: str, folder: str, **kwargs) -> Builder:
    def build(root: Path, split: str, download: bool) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        split_kwargs = {"train": split == "train"} if cls_name.startswith("CIFAR") else {}
        if cls_name == "SVHN":
            split_kwargs = {"split": split}
        if cls_name == "Places365":
            split_kwargs = {"split": "train-standard" if split == "train" else "val"}
        return cls(str(root / folder), download=download, **split_kwargs, **kwargs)

    return build


def _dtd(root: Path, split: str, download: bool) -> Dataset:
    """Textures: the whole DTD (all 5,640 images) is the OOD set, as in the MCM and MOS papers."""
    import torchvision.datasets as tvd
    from torch.utils.data import ConcatDataset

    parts = [tvd.DTD(str(root / "dtd"), split=s, partition=1, download=download) for s in ("train", "val", "test")]
    joined = ConcatDataset(parts)
    joined.classes = parts[0].classes
    return joined


def _folder(
    folder: str, classes: Callable[[], Sequence[str]] | None = None, split_dirs: bool = False, labelled: bool = True
) -> Builder:
    def build(root: Path, split: str, download: bool) -> Dataset:
        path = root / folder / ({"train": "train", "test": "val"}[split] if split_dirs else "")
        return ImageFiles(path, classes=list(classes()) if classes else None, labelled=labelled)

    return build


def _unlabelled(folder: str) -> Builder:
    """A benchmark OOD set that ships without labels, whatever its sub-folders (MOS: iNaturalist/images/*.jpg)."""
    return _folder(folder, labelled=False)


def _digits(*digits: int) -> Builder:
    return lambda root, split, download: Digits(split, digits)


def _wnids(table: Callable[[], dict[str, str]]) -> Callable[[], list[str]]:
    return lambda: sorted(table())


def _names(table: Callable[[], dict[str, str]]) -> Callable[[], list[str]]:
    return lambda: [table()[w] for w in sorted(table())]


def _imagenet_subset(
    name: str, table: Callable[[], dict[str, str]], ood: tuple[str, ...], folder: str | None = None
) -> DatasetSpec:
    """A subset built by make_imagenet10.py; `folder` when it shares another entry's images (other names)."""
    shared, name = folder or "", folder or name
    return DatasetSpec(
        build=_folder(name, _wnids(table), split_dirs=True),
        source="build it from ImageNet-1k (image-net.org, manual download) with make_imagenet10.py",
        layout=f"{name}/train/<wnid>/*.JPEG and {name}/val/<wnid>/*.JPEG",
        classnames=_names(table),
        class_ids=_wnids(table),
        ood=ood,
        family=shared,
    )


ODIN = "https://www.dropbox.com/"
MOS = "https://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset/"
CIFAR_OOD = ("svhn", "textures", "places365", "lsun", "isun")
IMAGENET_OOD = ("inaturalist", "sun", "places", "textures")

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        build=_torchvision("CIFAR10", ""), source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        layout="cifar-10-batches-py/ (downloaded automatically)", classnames=names.CIFAR10,
        ood=(*CIFAR_OOD, "cifar100"), ood_protocol=CIFAR_PROTOCOL,
    ),
    "cifar100": DatasetSpec(
        build=_torchvision("CIFAR100", ""), source="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        layout="cifar-100-python/ (downloaded automatically)", classnames=names.CIFAR100,
        ood=(*CIFAR_OOD, "cifar10"), ood_protocol=CIFAR_PROTOCOL,
    ),
    "svhn": DatasetSpec(
        build=_torchvision("SVHN", "svhn"), source="http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
        layout="svhn/test_32x32.mat (downloaded automatically)", classnames=names.DIGIT_WORDS,
    ),
    "textures": DatasetSpec(
        build=_dtd, source="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        layout="dtd/dtd/images/<texture>/*.jpg (downloaded automatically)", splits=("test",),
    ),
    "places365": DatasetSpec(
        build=_torchvision("Places365", "places365", small=True),
        source="http://data.csail.mit.edu/places/places365/val_256.tar (+ filelist_places365-standard.tar)",
        layout="places365/val_256/*.jpg and its file lists (downloaded automatically)",
        splits=("test",), subset=10_000,
    ),
    "lsun": DatasetSpec(
        build=_unlabelled("LSUN"), source=ODIN + "s/fhtsw1m3qxlwj6h/LSUN.tar.gz", layout="LSUN/**/*.jpg (LSUN crop)",
        splits=("test",),
    ),
    "lsun_resize": DatasetSpec(
        build=_unlabelled("LSUN_resize"), source=ODIN + "s/moqh2wh8696c3yl/LSUN_resize.tar.gz",
        layout="LSUN_resize/**/*.jpg", splits=("test",), family="lsun",
    ),
    "isun": DatasetSpec(
        build=_unlabelled("iSUN"), source=ODIN + "s/ssz7qxfqae0cca5/iSUN.tar.gz", layout="iSUN/**/*.jpeg",
        splits=("test",),
    ),
    "imagenet": DatasetSpec(
        build=_folder("imagenet", _wnids(names.imagenet1k), split_dirs=True),
        source="https://image-net.org/download.php (ILSVRC-2012, manual download after registration)",
        layout="imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG (1,000 wnid folders each)",
        classnames=_names(names.imagenet1k), class_ids=_wnids(names.imagenet1k), ood=IMAGENET_OOD, knn_k=1000,
    ),
    "imagenet10": _imagenet_subset("imagenet10", lambda: names.IMAGENET10, ("imagenet20",)),
    "imagenet10_mcm": _imagenet_subset("imagenet10_mcm", lambda: names.IMAGENET10_MCM, ("imagenet20",)),
    # MCM's ImageNet-20 numbers were measured against its ImageNet-10 (the horse list)
    "imagenet20": _imagenet_subset("imagenet20", lambda: names.IMAGENET20, ("imagenet10_mcm",)),
    "imagenet100": _imagenet_subset("imagenet100", names.imagenet100, IMAGENET_OOD),
    "imagenet100_mcm": _imagenet_subset("imagenet100", names.imagenet100_mcm, IMAGENET_OOD, folder="imagenet100"),
    "inaturalist": DatasetSpec(
        build=_unlabelled("iNaturalist"), source=MOS + "iNaturalist.tar.gz", layout="iNaturalist/images/*.jpg",
        splits=("test",),
    ),
    "sun": DatasetSpec(build=_unlabelled("SUN"), source=MOS + "SUN.tar.gz", layout="SUN/images/*.jpg", splits=("test",)),
    "places": DatasetSpec(
        build=_unlabelled("Places"), source=MOS + "Places.tar.gz", layout="Places/images/*.jpg", splits=("test",),
        family="places365",  # MOS's curated subset of Places365
    ),
    "imagenet_v2": DatasetSpec(
        build=shift.imagenet_v2, source=shift.V2_URL + " (downloaded automatically)",
        layout=f"{shift.V2_FOLDER}/<0..999>/*.jpeg (folder i = ImageNet class i)", splits=("test",),
        class_ids=_wnids(names.imagenet1k), ood=IMAGENET_OOD,
    ),
    "imagenet_sketch": DatasetSpec(
        build=shift.wnid_set("sketch"), source="https://github.com/HaohanWang/ImageNet-Sketch (Kaggle, Google Drive "
        "or huggingface.co/datasets/imagenet_sketch; manual)", layout="sketch/<wnid>/*.JPEG (1,000 wnid folders)",
        splits=("test",), class_ids=_wnids(names.imagenet1k), ood=IMAGENET_OOD,
    ),
    "imagenet_r": DatasetSpec(
        build=shift.wnid_set("imagenet-r"), source="https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar "
        "(downloaded by pytorch-ood)", layout="imagenet-r/<wnid>/*.jpg (200 wnid folders)", splits=("test",),
        ood=IMAGENET_OOD,
    ),
    "imagenet_a": DatasetSpec(
        build=shift.wnid_set("imagenet-a"), source="https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar "
        "(downloaded by pytorch-ood)", layout="imagenet-a/<wnid>/*.jpg (200 wnid folders)", splits=("test",),
        ood=IMAGENET_OOD,
    ),
    "imagenet_o": DatasetSpec(  # OOD for ImageNet-1k: 200 classes outside it, unlabelled here
        build=shift.imagenet_o, source="https://people.eecs.berkeley.edu/~hendrycks/imagenet-o.tar (downloaded by "
        "pytorch-ood)", layout="imagenet-o/<wnid>/*.jpg", splits=("test",),
    ),
    # MCM's fine-grained ID sets (Table 2) and two of CLIP's; templates: --templates mcm (MCM), or CLIP's per-set ones
    "cub200": DatasetSpec(
        build=fine_grained.cub200, source="https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz, manual)",
        layout="CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}",
        ood=IMAGENET_OOD,
    ),
    "stanford_cars": DatasetSpec(
        build=fine_grained.torchvision_set("StanfordCars", {"train": "train", "test": "test"}, download=False),
        source="manual: Stanford's URL is dead and torchvision cannot download it; a mirror of the images, devkit "
        "and cars_test_annos_withlabels.mat (e.g. Kaggle 'jessicali9530/stanford-cars-dataset'; deeplearning-wisc/MCM "
        "issue #8)", layout="stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, "
        "cars_test/, cars_test_annos_withlabels.mat}", ood=IMAGENET_OOD,
    ),
    "food101": DatasetSpec(  # class folders made readable: CLIP's names (MCM's list swaps cheesecake/cheese plate)
        build=fine_grained.torchvision_set("Food101", {"train": "train", "test": "test"}, verbatim=False),
        source="https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz (torchvision, automatic; 5 GB)",
        layout="food-101/{meta/, images/}", ood=IMAGENET_OOD,
    ),
    "oxford_pets": DatasetSpec(
        build=fine_grained.torchvision_set("OxfordIIITPet", {"train": "trainval", "test": "test"}),
        source="https://www.robots.ox.ac.uk/~vgg/data/pets/ (torchvision, automatic)",
        layout="oxford-iiit-pet/{images/, annotations/}", ood=IMAGENET_OOD,
    ),
    "flowers102": DatasetSpec(
        build=fine_grained.torchvision_set("Flowers102", {s: s for s in ("train", "val", "test")}, verbatim=False),
        source="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (torchvision, automatic)",
        layout="flowers-102/{jpg/, imagelabels.mat, setid.mat}", classnames=fine_grained.flowers102_clip,
        splits=("train", "val", "test"), ood=IMAGENET_OOD,
    ),
    "fgvc_aircraft": DatasetSpec(
        build=fine_grained.torchvision_set("FGVCAircraft", {s: s for s in ("train", "val", "test")}),
        source="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (torchvision, automatic)",
        layout="fgvc-aircraft-2013b/data/{images/, variants.txt, images_variant_*.txt}",
        splits=("train", "val", "test"), ood=IMAGENET_OOD,
    ),
    "digits": DatasetSpec(
        build=_digits(0, 1, 2, 3, 4), source="ships with scikit-learn (offline)", layout="nothing: built in",
        classnames=[f"digit {w}" for w in names.DIGIT_WORDS[:5]], ood=("digits_ood", "faces", "skimage_textures"),
    ),
    "digits_ood": DatasetSpec(
        build=_digits(7, 8, 9), source="ships with scikit-learn (offline)", layout="nothing: built in",
        classnames=[f"digit {w}" for w in names.DIGIT_WORDS[7:]],
    ),
    "faces": DatasetSpec(  # far OOD for digits
        build=lambda root, split, download: skimage.faces(), source="ships with scikit-image (offline)",
        layout="nothing: built in", splits=("test",),
    ),
    "skimage_textures": DatasetSpec(  # far OOD for digits
        build=lambda root, split, download: skimage.texture_patches(), source="ships with scikit-image (offline)",
        layout="nothing: built in", splits=("test",),
    ),
    "digits_aux": DatasetSpec(  # auxiliary outliers for OOD-aware fine-tuning, never a test set
        build=_digits(5, 6), source="ships with scikit-learn (offline)", layout="nothing: built in",
        classnames=[f"digit {w}" for w in names.DIGIT_WORDS[5:7]],
    ),
}


def _openood_specs(benchmark: str) -> dict[str, DatasetSpec]:
    """An OpenOOD v1.5 benchmark: its ID set (train/val/test lists) and each OOD set (test, and val for the one
    OpenOOD tunes on), under names like openood_imagenet:ssb_hard; the results get nearood/farood mean rows."""
    bench = openood.BENCHMARKS[benchmark]
    named = {d: openood.ood_name(benchmark, d) for d in (*bench.near, *bench.far)}
    family = {"cifar10": "cifar10", "cifar100": "cifar100"}.get(bench.lists, "imagenet")
    specs = {benchmark: DatasetSpec(family=family,
        build=openood.builder(benchmark), source=openood.SOURCE, layout=openood.layout(benchmark, None),
        splits=("train", "val", "test"), ood=tuple(named.values()), knn_k=bench.knn_k,
        ood_groups={"nearood": tuple(named[d] for d in bench.near), "farood": tuple(named[d] for d in bench.far)},
    )}  # fmt: skip
    for dataset in bench.csid:  # shifted ID (--shifted-id), labelled as the ID set: OpenOOD's FSOOD lists
        specs[openood.ood_name(benchmark, dataset)] = DatasetSpec(
            build=openood.builder(benchmark, dataset), source=openood.SOURCE,
            layout=openood.layout(benchmark, dataset), splits=("test",), family=dataset,
        )  # fmt: skip
    for dataset, name in named.items():
        specs[name] = DatasetSpec(
            build=openood.builder(benchmark, dataset), source=openood.SOURCE,
            layout=openood.layout(benchmark, dataset), splits=("val", "test") if dataset == bench.val_ood else ("test",),
            family=openood.FAMILIES.get(dataset, dataset),
        )  # fmt: skip
    return specs


for _benchmark in openood.BENCHMARKS:
    DATASETS.update(_openood_specs(_benchmark))


def family(name: str) -> str:
    """The source a set's images come from: sets of one family may share images (cifar100 and
    openood_cifar10:cifar100; places365 and places); folder: sets are their own."""
    return DATASETS[name].family or name if name in DATASETS else name


def get_spec(name: str) -> DatasetSpec:
    """The registered spec of `name`, or a spec for `folder:PATH`; unknown names list the valid ones."""
    if name.startswith(FOLDER_PREFIX):
        if not name[len(FOLDER_PREFIX) :].strip():
            raise UserError(f"{FOLDER_PREFIX}PATH needs a path, e.g. {FOLDER_PREFIX}./my_images")
        path = Path(name[len(FOLDER_PREFIX) :]).expanduser()
        split_dirs = (path / "train").is_dir() and (path / "val").is_dir()
        return DatasetSpec(
            build=_folder(str(path.resolve()), split_dirs=split_dirs),
            source="your own folder", layout="an ImageFolder tree (<class>/*.jpg), a flat folder of images, "
            "or train/ and val/ sub-folders of either", splits=SPLITS if split_dirs else ("test",),
        )
    if name not in DATASETS:
        plain = [n for n in DATASETS if ":" not in n]
        raise UserError(f"unknown dataset '{name}'; known: {', '.join(plain)}, OpenOOD's sets as "
                        f"<benchmark>:<set> (e.g. openood_imagenet:ssb_hard), or {FOLDER_PREFIX}PATH; "
                        f"--list-datasets prints them all")  # fmt: skip
    return DATASETS[name]

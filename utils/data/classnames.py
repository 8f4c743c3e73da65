"""Class names of every labelled dataset, in each dataset's label order; ImageNet kept as wnid -> name."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from utils.errors import UserError

RESOURCES = Path(__file__).parent / "resources"

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CIFAR100_RAW = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout
tulip turtle wardrobe whale willow_tree wolf woman worm"""
CIFAR100 = tuple(name.replace("_", " ") for name in _CIFAR100_RAW.split())

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=1)
def imagenet1k() -> dict[str, str]:
    """All 1,000 ImageNet-1k classes, wnid -> clean name (open_clip's names), in the standard sorted-wnid order."""
    lines = (RESOURCES / "imagenet1k_classes.tsv").read_text().splitlines()
    return dict(line.split("\t") for line in lines if not line.startswith("#"))


# ImageNet-10 as planned in the project notes.
IMAGENET10 = {
    "n04552348": "plane",
    "n04285008": "car",
    "n01530575": "bird",
    "n02123597": "cat",
    "n02422699": "antelope",
    "n02107574": "dog",
    "n01641577": "frog",
    "n01728572": "snake",
    "n03095699": "ship",
    "n03417042": "truck",
}
# The list published with MCM (horse instead of snake), with the names MCM's released code prompts with
# (deeplearning-wisc/MCM utils/common.py obtain_ImageNet10_classes). Every published ImageNet-10 number uses it.
IMAGENET10_MCM = {
    "n04552348": "warplane",
    "n04285008": "sports car",
    "n01530575": "brambling bird",
    "n02123597": "Siamese cat",
    "n02422699": "antelope",
    "n02107574": "swiss mountain dog",
    "n01641577": "bull frog",
    "n03417042": "garbage truck",
    "n02389026": "horse",
    "n03095699": "container ship",
}

IMAGENET20 = {
    "n04147183": "sailboat",
    "n02951358": "canoe",
    "n02782093": "balloon",
    "n04389033": "tank",
    "n03773504": "missile",
    "n02917067": "bullet train",
    "n02317335": "starfish",
    "n01632458": "spotted salamander",
    "n01630670": "common newt",
    "n01631663": "eft",
    "n02391049": "zebra",
    "n01693334": "green lizard",
    "n01697457": "African crocodile",
    "n02120079": "Arctic fox",
    "n02114367": "timber wolf",
    "n02132136": "brown bear",
    "n03785016": "moped",
    "n04310018": "steam locomotive",
    "n04266014": "space shuttle",
    "n04252077": "snowmobile",
}

IMAGENET100_WNIDS = """
n03877845 n03000684 n03110669 n03710721 n02825657 n02113186 n01817953 n04239074 n02002556 n04356056
n03187595 n03355925 n03125729 n02058221 n01580077 n03016953 n02843684 n04371430 n01944390 n03887697
n04037443 n02493793 n01518878 n03840681 n04179913 n01871265 n03866082 n03180011 n01910747 n03388549
n03908714 n01855032 n02134084 n03400231 n04483307 n03721384 n02033041 n01775062 n02808304 n13052670
n01601694 n04136333 n03272562 n03895866 n03995372 n06785654 n02111889 n03447721 n03666591 n04376876
n03929855 n02128757 n02326432 n07614500 n01695060 n02484975 n02105412 n04090263 n03127925 n04550184
n04606251 n02488702 n03404251 n03633091 n02091635 n03457902 n02233338 n02483362 n04461696 n02871525
n01689811 n01498041 n02107312 n01632458 n03394916 n04147183 n04418357 n03218198 n01917289 n02102318
n02088364 n09835506 n02095570 n03982430 n04041544 n04562935 n03933933 n01843065 n02128925 n02480495
n03425413 n03935335 n02971356 n02124075 n07714571 n03133878 n02097130 n02113799 n09399592 n03594945
""".split()


def imagenet100() -> dict[str, str]:
    """ImageNet-100 as published with MCM, wnid -> name from the ImageNet-1k table (open_clip's names)."""
    names = imagenet1k()
    return {wnid: names[wnid] for wnid in IMAGENET100_WNIDS}


@lru_cache(maxsize=1)
def imagenet100_mcm() -> dict[str, str]:
    """ImageNet-100 with the names MCM's release prompts with (the Keras class index, '_' -> ' ')."""
    lines = (RESOURCES / "imagenet100_mcm.tsv").read_text().splitlines()
    return dict(line.split("\t") for line in lines if not line.startswith("#"))


LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".list", ".names")  # a spec ending so is a file, even a missing one


def parse_labels(spec: str | Sequence[str], flag: str = "--classnames") -> list[str]:
    """User-given class names: a list, a comma-separated string, or a UTF-8 file with one name per line; each name
    once (two classes of one name could not be told apart)."""
    if not isinstance(spec, str):
        labels = [str(s).strip() for s in spec]
    elif "," not in spec and not Path(spec).is_file() and ("/" in spec or Path(spec).suffix in LIST_SUFFIXES):
        raise UserError(f"{flag} {spec}: no such file (give a file with one name per line, or a comma list)")
    elif Path(spec).is_file():
        try:
            labels = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as err:
            raise UserError(f"{flag} {spec} is not UTF-8 text: {err}") from err
    else:
        labels = [part.strip() for part in spec.split(",")]
    labels = [label for label in labels if label]
    if not labels:
        raise UserError(f"{flag} gave an empty label list")
    if twice := sorted({label for label in labels if labels.count(label) > 1}):
        raise UserError(f"{flag} names {', '.join(repr(t) for t in twice[:5])} more than once: each class needs a "
                        f"name of its own")  # fmt: skip
    return labels

"""Prompt templates: the named sets, template files, and rendering class names into prompts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path

from utils.errors import UserError

Template = str | Callable[[str], str]


@cache
def _openai_imagenet() -> tuple[Template, ...]:
    import open_clip  # when first asked for: the scripts' --help lists the set names without importing open_clip

    return tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)


class _TemplateSets(Mapping):
    """Name -> templates; a set given as a function is read from it when first asked for."""

    def __init__(self, sets: dict[str, tuple[Template, ...] | Callable[[], tuple[Template, ...]]]):
        self._sets = sets

    def __getitem__(self, name: str) -> tuple[Template, ...]:
        value = self._sets[name]
        return value() if callable(value) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._sets)

    def __len__(self) -> int:
        return len(self._sets)


AS_IS: tuple[Template, ...] = ("{}",)  # whole prompts, encoded as they are
TEMPLATE_SETS: Mapping[str, tuple[Template, ...]] = _TemplateSets({
    "single": ("a photo of a {}.",),  # CLIP's paper's prompt
    "mcm": ("a photo of a {}",),  # MCM's released code (utils/detection_util.py): no full stop
    "ensemble": _openai_imagenet,  # the 80 OpenAI ImageNet templates
    # CLIP's per-dataset templates (openai/CLIP d05afc4 data/prompts.md)
    "cars": ("a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
             "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}."),
    "food101": ("a photo of {}, a type of food.",),
    "pets": ("a photo of a {}, a type of pet.",),
    "flowers102": ("a photo of a {}, a type of flower.",),
    "aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
})  # fmt: skip


# NegLabel's released prompts (XueJiang16/NegLabel: custom_config/clip.py prompt_idx_pos = prompt_idx_neg = 85,
# multi_modal.py): ID labels and negative nouns "the nice {}", negative adjectives "This is a {} photo".
NEGLABEL_PROMPTS: dict[str, tuple[Template, ...]] = {"noun": ("the nice {}",), "adj": ("This is a {} photo",)}
# AdaNeg's released prompts (YBZh/OpenOOD-VLM 694592a openood/networks/clip_fixed_ood_prompt.py, prompt=nice).
ADANEG_PROMPTS: dict[str, tuple[Template, ...]] = {"noun": ("The nice {}.",), "adj": ("This is a {} photo.",)}
# CSP's released prompts (MengyuanChen21/NeurIPS2024-CSP mmcls/models/classifiers/class_names.py): ID labels and
# nouns as the mean of 8 (preset_noun_prompt_templates), its conjugated labels of 4 (preset_adj_prompt_templates),
# raw embeddings averaged.
CSP_PROMPTS: dict[str, tuple[Template, ...]] = {
    "noun": ("a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
             "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}"),
    "adj": ("{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}"),
}  # fmt: skip


def load_templates(spec: str) -> tuple[Template, ...]:
    """A named template set, or a text file with one template containing `{}` per line."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--templates '{spec}' is neither a known set ({', '.join(TEMPLATE_SETS)}) nor a file")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise UserError(f"template file {path} is not UTF-8 text: {err}") from err
    bad = [line for line in lines if not is_template(line)]
    if not lines or bad:
        raise UserError(
            f"template file {path} needs one template per line, each with exactly one '{{}}'; bad: {bad[:3]}"
        )
    return tuple(lines)


def is_template(line: str) -> bool:
    """Exactly one `{}` placeholder and nothing else `str.format` would choke on."""
    try:
        return line.format("\0").count("\0") == 1
    except (IndexError, KeyError, ValueError):
        return False


def template_text(template: Template) -> str:
    """A template as text with its `{}` (callable templates, like open_clip's, rendered with "{}")."""
    if isinstance(template, str):
        return template
    return getattr(template, "text", None) or template("{}")


def render(templates: Sequence[Template], classname: str) -> list[str]:
    """Every prompt for one class name."""
    return [t.format(classname) if isinstance(t, str) else t(classname) for t in templates]

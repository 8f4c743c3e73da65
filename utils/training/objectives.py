"""The Objective base and the project notes' four OOD-aware objectives, as modules whose forward returns the loss.

Each wraps the CLIP model (so DistributedDataParallel sees one forward) and declares its own settings once
(utils/settings.py: finetune_clip.py's flags come from them). An objective whose method has its own score says
which score inputs it `provides` and fills them into the checkpoint's ScoreContract.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.features.text import encode_texts
from utils.models.checkpoint import ScoreContract
from utils.models.logits import logit_scale, model_logits
from utils.prompts import TEMPLATE_SETS, Template, is_template, render, template_text
from utils.settings import Setting, non_negative_float
from utils.training.towers import freeze

if TYPE_CHECKING:
    from utils.models.loading import ModelBundle

GROUPS_DIR = Path(__file__).resolve().parents[2] / "configs" / "groups"
OOD_PROMPT = Setting("ood_prompt", "a photo of an unknown object.", "the OOD class's prompt", "toolkit")
OE_WEIGHT = Setting(
    "oe_weight", 0.5, "weight of the outlier term", "Outlier Exposure (Hendrycks et al., ICLR 2019): λ = 0.5 for "
    "vision", type=non_negative_float,
)  # fmt: skip
GROUPS = Setting(
    "groups", None, 'a JSON file {"groups": [{"name", "classes"}]}', "toolkit", metavar="FILE",
    default_text="configs/groups/<in>.json",
)  # fmt: skip
OTHERS_PROMPT = Setting(
    "others_prompt", "a photo of something that is not a {}.", "the others slot's prompt, {} = the group's name",
    "toolkit",
)  # fmt: skip


def class_prompts(classnames: Sequence[str]) -> list[str]:
    """One prompt per class, "a photo of a {}.": the evaluation's default class head is built the same way."""
    return [render(TEMPLATE_SETS["single"], name)[0] for name in classnames]


class Objective(torch.nn.Module):
    """Base: holds the model and class names; `forward(images, labels, aux, step_seed)` -> loss."""

    needs_aux = False
    settings: tuple[Setting, ...] = ()  # its own settings: keyword arguments of the constructor
    inputs: tuple[str, ...] = ()  # run values it takes by name (the seed)
    provides: tuple[str, ...] = ()  # score inputs this method's checkpoint supplies (see ScoreContract)
    frozen: str | None = None  # the tower this method always keeps fixed ("all": only its own parameters train)
    defaults: ClassVar[dict[str, Any]] = {}  # its paper's training settings, where they differ from ours
    defaults_source: ClassVar[str] = ""  # where `defaults` come from
    drop_last = False  # leave out each epoch's last, short batch of ID images
    unused_parameters = False  # some trainable parameters get no gradient in a step (a stage's): DDP must know
    mixed_precision = True  # steps under the device's autocast (bf16 on CUDA); False: fp32, as its release trains

    def __init__(self, bundle: ModelBundle, classnames: Sequence[str], templates: Sequence[Template], **_: Any):
        super().__init__()
        self.bundle, self.model = bundle, bundle.model  # the model as a submodule: DDP sees its parameters
        self.classnames, self.templates = list(classnames), list(templates)

    @classmethod
    def options(cls, values: dict[str, Any], dataset: str, classnames: Sequence[str]) -> dict[str, Any]:
        """The constructor's keyword arguments from the values of its settings and inputs (a file named by a
        setting is read here, so the recorded options hold what trained)."""
        return dict(values)

    def trainable(self, tower: str) -> list[torch.nn.Parameter]:
        """The parameters to optimise, `tower` (--freeze) kept fixed."""
        return freeze(self.model, tower)

    def train_transform(self) -> Any:
        """The training images' transform: the model's own (random crops) by default."""
        return self.bundle.train_preprocess or self.bundle.preprocess

    def check(self, config: Any) -> None:
        """Refuse training settings the method cannot work with, before the first step (a TrainConfig)."""

    def restart_epoch(self) -> int | None:
        """Where a method's second stage starts its learning-rate schedule again (None: one stage)."""
        return None

    def learned_state(self) -> dict[str, torch.Tensor]:
        """What the method trains beside the model's weights (e.g. a prompt context), for last.pt."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    def texts(self, prompts: Sequence[str]) -> torch.Tensor:
        return encode_texts(self.bundle, prompts)

    class_templates: tuple[Template, ...] = TEMPLATE_SETS["single"]  # what `class_prompts` renders

    def contract(self, method: str) -> ScoreContract:
        """What the checkpoint hands to the scores; subclasses that `provide` inputs add theirs."""
        templates = tuple(template_text(t) for t in self.class_templates)
        return ScoreContract(method, tuple(self.classnames), logit_scale(self.model).item(), class_templates=templates)


class ContrastiveObjective(Objective):
    """Baseline #1: CLIP's contrastive loss on (image, caption) pairs with class-aware targets.

    Captions of the same class are positives of each other, never negatives: the target of image i is
    uniform over the captions in the batch that share its class (and vice versa).
    """

    @property
    def class_templates(self) -> tuple[Template, ...]:  # captions draw one of the run's templates per image
        return tuple(self.templates)

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        rng = np.random.default_rng(step_seed)
        captions = [render([self.templates[int(rng.integers(len(self.templates)))]], self.classnames[int(y)])[0]
                    for y in labels]  # fmt: skip
        image_feats, text_feats = self.image_features(images), self.texts(captions)
        logits = model_logits(self.model, image_feats, text_feats)
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class KPlusOneObjective(Objective):
    """Baseline #2: a (K+1)-th "OOD" class, its prompt configurable, trained on an auxiliary outlier pool."""

    needs_aux = True
    settings = (OOD_PROMPT,)
    provides = ("ood_prompt_features",)

    def __init__(self, *args: Any, ood_prompt: str = OOD_PROMPT.default, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ood_prompt = ood_prompt

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        text = self.texts([*class_prompts(self.classnames), self.ood_prompt])
        both = torch.cat([images, aux])
        targets = torch.cat([labels, torch.full((len(aux),), len(self.classnames), device=labels.device)])
        return F.cross_entropy(model_logits(self.model, self.image_features(both), text), targets)

    def contract(self, method: str) -> ScoreContract:
        return replace(super().contract(method), texts={"ood_prompt_features": (self.ood_prompt,)})


class OutlierExposureObjective(Objective):
    """Baseline #3 (Hendrycks et al., ICLR 2019): ID cross-entropy + w · CE(uniform over ID prompts) on outliers."""

    needs_aux = True
    settings = (OE_WEIGHT,)

    def __init__(self, *args: Any, oe_weight: float = OE_WEIGHT.default, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.oe_weight = oe_weight

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        text = self.texts(class_prompts(self.classnames))
        id_loss = F.cross_entropy(model_logits(self.model, self.image_features(images), text), labels)
        aux_log_p = F.log_softmax(model_logits(self.model, self.image_features(aux), text), dim=1)
        return id_loss + self.oe_weight * (-aux_log_p.mean(dim=1)).mean()


def load_groups(spec: str | None, dataset: str, classnames: Sequence[str]) -> list[dict[str, Any]]:
    """Groups [{name, classes}] from a JSON file, or the shipped default for the dataset; every class in one group."""
    path = Path(spec) if spec else GROUPS_DIR / f"{dataset}.json"
    if not path.is_file():
        shipped = ", ".join(p.stem for p in sorted(GROUPS_DIR.glob("*.json")))
        raise UserError(f"no group configuration {path}; pass --groups FILE (shipped defaults: {shipped})")
    try:
        groups = json.loads(path.read_text())["groups"]
        members = [c for g in groups for c in g["classes"]]
        if not all(isinstance(g["name"], str) and g["name"] for g in groups) or not all(
            isinstance(c, str) for c in members
        ):
            raise TypeError("every group needs a non-empty string name and a list of class-name strings")
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f'{path}: expected {{"groups": [{{"name": ..., "classes": [...]}}, ...]}} ({err})') from err
    if sorted(members) != sorted(classnames):
        odd = sorted(c for c in set(members) if members.count(c) > 1 or c not in classnames)
        raise UserError(f"{path}: the groups must hold every class of {dataset} exactly once; "
                        f"missing {sorted(set(classnames) - set(members))}, extra or repeated {odd}")  # fmt: skip
    return groups


class GroupObjective(Objective):
    """Baseline #4, MOS-style (Huang & Li, CVPR 2021): one softmax per group over its classes + "others".

    ID images are their class in their group and "others" elsewhere; auxiliary outliers are "others" everywhere.
    """

    needs_aux = True
    settings = (GROUPS, OTHERS_PROMPT)
    provides = ("groups", "others_features")

    @classmethod
    def options(cls, values: dict[str, Any], dataset: str, classnames: Sequence[str]) -> dict[str, Any]:
        return {**values, "groups": load_groups(values.get("groups"), dataset, classnames)}

    def __init__(self, *args: Any, groups: list[dict[str, Any]] | None = None,
                 others_prompt: str = OTHERS_PROMPT.default, **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        if not groups:
            raise UserError("the group method needs a group configuration")
        if not is_template(others_prompt):
            raise UserError(f"--others-prompt needs exactly one {{}} for the group name, got {others_prompt!r}")
        self.groups, self.others_prompt = groups, others_prompt
        index = {name: k for k, name in enumerate(self.classnames)}
        self.members = [[index[c] for c in g["classes"]] for g in groups]

    def forward(self, images, labels, aux, step_seed) -> torch.Tensor:
        prompts = class_prompts(self.classnames)
        text = self.texts([*prompts, *self.others_prompts()])
        feats = self.image_features(torch.cat([images, aux]))
        every = torch.cat([labels, torch.full((len(aux),), -1, device=labels.device)])
        logits = model_logits(self.model, feats, text)
        loss = 0.0
        for g, members in enumerate(self.members):
            group_logits = torch.cat([logits[:, members], logits[:, len(prompts) + g : len(prompts) + g + 1]], dim=1)
            lookup = torch.full((len(self.classnames) + 1,), len(members), device=labels.device)  # default: others
            lookup[torch.tensor(members, device=labels.device)] = torch.arange(len(members), device=labels.device)
            loss = loss + F.cross_entropy(group_logits, lookup[every])
        return loss / len(self.members)

    def others_prompts(self) -> list[str]:
        return [self.others_prompt.format(g["name"]) for g in self.groups]

    def contract(self, method: str) -> ScoreContract:
        return replace(super().contract(method), texts={"others_features": tuple(self.others_prompts())},
                       values={"groups": [list(g["classes"]) for g in self.groups]})  # fmt: skip

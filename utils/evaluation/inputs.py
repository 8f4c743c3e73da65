"""What a run supplies to scores, one resolver per input name, and the registry of the scores' settings.

A score declares the InDistribution fields it fits on (`needs`), its constructor inputs (`inputs`) and its settings
(`settings`); each name is resolved here. A resolver says why its input cannot be had in this run (`missing`: the
score is skipped under `--score all`, an error when named), checks what it can before any image is encoded
(`check`), builds the value once the features exist (`resolve`) and names the settings it reads (`settings`). A
setting is the run's value of it unless a resolver says more (KNN's k: the ID set's default); any other name comes
from the fine-tuned checkpoint's ScoreContract, so a fine-tuning method with its own score needs no new resolver.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utils.data.words import CSP_POOL, PARTS_OF_SPEECH, WORDNET_POOL, load_words
from utils.errors import Missing, UserError
from utils.evaluation.options import EvalOptions
from utils.models import CLIP_LOGIT_SCALE
from utils.prompts import ADANEG_PROMPTS, CSP_PROMPTS, NEGLABEL_PROMPTS, Template, template_text
from utils.scores import (
    ADANEG_NEGATIVES,
    CSP_WORDS,
    EOE_NAMES,
    NEG_FRACTION,
    NEG_PERCENTILE,
    NEG_WORDS,
    NEGREFINE_TOP_K,
    NEGREFINE_WORDS,
    PAPER_K,
    POOD_HEAD,
    SCORES,
    Head,
    K,
    MultiMatching,
    NegativeLabels,
    envisioned_names,
    mine_negative_labels,
    needed_pairs,
    needs_text,
)
from utils.settings import Setting, collect

if TYPE_CHECKING:
    from utils.data.splits import LoadedDataset
    from utils.distributed import World
    from utils.features.store import CachedFeatures, FeatureCache
    from utils.models.checkpoint import ScoreContract
    from utils.models.loading import ModelBundle

# The model and text modules (torch, open_clip) are imported where they are used: score_settings() builds the
# scripts' flags, and --help answers without them.


@dataclass
class Experiment:
    """What a run is about; filled in as the run goes (scores chosen, then data, then the model)."""

    options: EvalOptions
    model_name: str
    contract: ScoreContract | None = None
    id_test: LoadedDataset | None = None
    id_train: LoadedDataset | None = None
    ood_sets: list[LoadedDataset] = field(default_factory=list)
    bundle: ModelBundle | None = None
    cache: FeatureCache | None = None
    world: World | None = None
    notes: list[str] = field(default_factory=list)  # shown and saved with the results
    run_notes: list[str] = field(default_factory=list)  # what the run says before scoring: every scoring keeps them
    artifacts: dict[str, list[str]] = field(default_factory=dict)  # name -> lines, saved as name.txt


@dataclass
class Encoded:
    """The run's features: ID test and OOD sets per view, ID train (global view), the ID class-prompt embeddings."""

    id_test: dict[str, CachedFeatures]
    ood: dict[str, dict[str, CachedFeatures]]  # OOD set -> view -> features
    id_train: CachedFeatures | None = None
    text: np.ndarray | None = None


class PerSet(dict):
    """An input with one value per OOD set; sets without one are not scored by that score."""


Check = Callable[[Experiment], None]
WhyMissing = Callable[[Experiment], str | None]


@dataclass(frozen=True)
class Resolver:
    resolve: Callable[[Experiment, Encoded], Any]
    check: Check = lambda exp: None  # before any image is encoded; raises UserError
    missing: WhyMissing = lambda exp: None  # why this input cannot be had in this run; None if it can
    uses_train: bool | Callable[[EvalOptions], bool] = False  # reads the ID train split (its features or labels),
    # always or under these options: the run loads and encodes it
    settings: tuple[Setting, ...] = ()  # the settings it reads


def _image_only(exp: Experiment) -> str | None:
    from utils.models.loading import has_text_encoder

    if has_text_encoder(exp.model_name):
        return None
    usable = [name for name in SCORES if not needs_text(name)]
    return f"needs a text encoder; {exp.model_name} is image-only (scores that run without one: {', '.join(usable)})"


def _check_classnames(exp: Experiment) -> None:
    if not exp.id_test.classnames:
        raise UserError(f"'{exp.id_test.name}' has no class names (a flat folder?), which the zero-shot and label "
                        f"scores need; use an ImageFolder tree with one folder per class")  # fmt: skip


def _check_train(exp: Experiment) -> None:
    if exp.id_train is None:
        raise UserError(f"scores fitted on ID training features need the train split of '{exp.id_test.name}'")


def _ks(exp: Experiment) -> list[int]:
    return sorted(set(exp.options.value(K) or [getattr(exp.id_test.spec, "knn_k", PAPER_K)]))


def _check_ks(exp: Experiment) -> None:
    _check_train(exp)
    k, rows = max(_ks(exp)), len(exp.id_train.dataset)
    if k > rows:
        raise UserError(f"k={k} needs at least k training images; {exp.id_train.name} train has {rows} "
                        f"(choose k with --k)")  # fmt: skip


def _ood_class_names(exp: Experiment, encoded: Encoded) -> PerSet:
    """Each OOD set's own class names through the run's templates; sets without names get a note."""
    from utils.features.text import text_embeddings

    values = PerSet()
    for data in exp.ood_sets:
        if data.classnames:
            values[data.name] = text_embeddings(exp.bundle, data.classnames, exp.options.templates)
    unlabelled = [data.name for data in exp.ood_sets if not data.classnames]
    if unlabelled:
        exp.notes.append(f"skipped {', '.join(unlabelled)}: unlabelled, no class names to compete with the ID ones")
    return values


@dataclass(frozen=True)
class Mining:
    """How a negative-label method mines its negatives from a word pool, as its release does."""

    words: Setting  # the pool's flag
    pool: Path  # the pool without the flag
    prompts: dict[str, tuple[Template, ...]]  # part of speech -> templates; "noun"'s also render the ID labels
    artifact: str  # the mined list, saved as ARTIFACT.txt
    average: str = "unit"  # how the templates' embeddings are averaged (utils/features/text.py)
    exclude_above: float | None = None  # a candidate this close to an ID label is never kept
    parts: tuple[str, ...] = PARTS_OF_SPEECH  # the parts of speech in the order the negatives list them
    total: Setting | None = None  # a count of negatives shared by the parts as their candidates are (else a share)
    order_statistic: bool = False  # the percentile as the int(C·q)-th smallest similarity, not interpolated
    without_id_names: bool = False  # candidates that are ID class names left out first


# NegLabel: ID labels and nouns "the nice {}", adjectives "This is a {} photo". CSP: 8 and 4 templates, raw means,
# conjugated labels in place of the adjectives, and candidates above 0.95 cosine to an ID label left out. AdaNeg
# (OpenOOD-VLM clip_fixed_ood_prompt.py): "The nice {}." and "This is a {} photo.", ID names left out, 10,000
# negatives shared in proportion, ranked by value_cos.sort(1)[:, int(1000 * 0.95)], adjectives first.
NEGLABEL_MINING = Mining(NEG_WORDS, WORDNET_POOL, NEGLABEL_PROMPTS, "neglabel_words")
CSP_MINING = Mining(CSP_WORDS, CSP_POOL, CSP_PROMPTS, "csp_words", average="raw", exclude_above=0.95)
ADANEG_MINING = Mining(NEG_WORDS, WORDNET_POOL, ADANEG_PROMPTS, "adaneg_words", parts=("adj", "noun"),
                       total=ADANEG_NEGATIVES, order_statistic=True, without_id_names=True)  # fmt: skip


def _counts(mining: Mining, pool: list[tuple[str, str]], exp: Experiment) -> dict[str, int]:
    """Negatives per part of speech where a total is shared (AdaNeg: adj = int(T · n_adj / n), nouns the rest)."""
    if mining.total is None:
        return {}
    total, sizes = exp.options.value(mining.total), {pos: sum(tag == pos for _, tag in pool) for pos in mining.parts}
    if total > sum(sizes.values()):
        raise UserError(f"{mining.total.flag} {total}: the word pool has only {sum(sizes.values())} candidates")
    first = int(total * sizes[mining.parts[0]] / sum(sizes.values()))
    return {mining.parts[0]: first, mining.parts[1]: total - first}


def _words_checked(mining: Mining) -> Check:
    def check(exp: Experiment) -> None:
        _check_classnames(exp)
        load_words(exp.options.value(mining.words) or mining.pool)  # a missing or empty list fails now

    return check


def _mined(mining: Mining) -> Callable[[Experiment, Encoded], NegativeLabels]:
    """The release's mining: the lowest share (--neg-fraction) of each part of speech by a percentile
    (--neg-percentile) of its similarities to the ID labels; nouns first. With a learned prompt context (--ckpt of
    coop/locoop), the ID labels are its prompts."""

    def resolve(exp: Experiment, encoded: Encoded) -> NegativeLabels:
        from utils.features.text import learned_context, text_embeddings

        learned = learned_context(exp.options.templates) is not None
        id_features = text_embeddings(exp.bundle, exp.id_test.classnames,
                                      exp.options.templates if learned else mining.prompts["noun"],
                                      average="unit" if learned else mining.average)  # fmt: skip
        pool = load_words(exp.options.value(mining.words) or mining.pool)
        if mining.without_id_names:
            id_names = set(exp.id_test.classnames)
            pool = [(word, tag) for word, tag in pool if word not in id_names]
        share, percentile = exp.options.value(NEG_FRACTION), exp.options.value(NEG_PERCENTILE)
        counts = _counts(mining, pool, exp)
        picked_words, picked = [], []
        for pos in mining.parts:
            words = [word for word, tag in pool if tag == pos]
            if not words:
                continue
            candidates = text_embeddings(exp.bundle, words, mining.prompts[pos], exp.cache, mining.average)  # cached
            rows = mine_negative_labels(candidates, id_features, share, percentile, mining.exclude_above,
                                        counts.get(pos), mining.order_statistic)  # fmt: skip
            picked_words += [f"{words[i]}\t{pos}" for i in rows]
            picked.append(candidates[rows])
        exp.artifacts[mining.artifact] = picked_words
        return NegativeLabels(id_features, np.concatenate(picked))

    return resolve


def _envisioned_lines(exp: Experiment) -> list[str]:
    path = exp.options.value(EOE_NAMES)
    if path is None:
        raise Missing(
            "eoe needs --eoe-names FILE: the outlier class names an LLM envisioned for this ID set, one per "
            "line (README: EOE's prompts; or the names of one of its envisioned_classes/ JSON files)"
        )
    if not Path(path).is_file():
        raise UserError(f"--eoe-names file not found: {path}")
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix != ".json":
        return text.splitlines()
    try:  # the release's envisioned_classes/*.json: {task or ID class: [names]}, every list joined
        lists = json.loads(text).values()
        return [str(name) for names in lists for name in names]
    except (ValueError, AttributeError, TypeError) as err:
        raise UserError(f"--eoe-names {path} is not EOE's JSON layout ({{key: [names]}}): {err}") from err


def _check_envisioned(exp: Experiment) -> None:
    _check_classnames(exp)
    if not envisioned_names(_envisioned_lines(exp), list(exp.id_test.classnames)):
        raise UserError(f"--eoe-names {exp.options.value(EOE_NAMES)}: no name left that is not an ID class name")


def _envisioned(exp: Experiment, encoded: Encoded) -> np.ndarray:
    """EOE's envisioned names, cleaned as released, through the run's templates (as the ID names); saved as
    eoe_words.txt."""
    from utils.features.text import text_embeddings

    names = envisioned_names(_envisioned_lines(exp), list(exp.id_test.classnames))
    exp.artifacts["eoe_words"] = names
    return text_embeddings(exp.bundle, names, exp.options.templates)


def _negrefine_pool(exp: Experiment) -> list[tuple[str, str]]:
    path = exp.options.value(NEGREFINE_WORDS)
    if path is None:
        raise Missing("negrefine needs --negrefine-words FILE: the refined negative labels (an LLM's filtering of "
                      "CSP's; the release's output/imagenet/seed_0/neg_labels_{noun,adj}.txt through python -m "
                      "tools.neglabel_words --negrefine)")  # fmt: skip
    return load_words(path)


def _check_negrefine(exp: Experiment) -> None:
    _check_classnames(exp)
    _negrefine_pool(exp)


def _negrefine(exp: Experiment, encoded: Encoded) -> MultiMatching:
    """NegRefine's labels as released: ID labels and nouns the mean of 8 raw prompt embeddings, adjectives (already
    with their CSP suffix) of 4, nouns first, no mining; and the prompt "<ID label> and <negative>" (8 templates)
    of every pair that multi-matching reads for an image of this run's sets."""
    from utils.features.images import DEFAULT_VIEW
    from utils.features.text import text_embeddings

    names, pool = list(exp.id_test.classnames), _negrefine_pool(exp)
    words = [[word for word, tag in pool if tag == pos] for pos in PARTS_OF_SPEECH]
    id_features = text_embeddings(exp.bundle, names, CSP_PROMPTS["noun"], average="raw")
    negatives = np.concatenate([text_embeddings(exp.bundle, part, CSP_PROMPTS[pos], exp.cache, "raw")
                                for part, pos in zip(words, PARTS_OF_SPEECH, strict=True) if part])  # fmt: skip
    labels, flat = NegativeLabels(id_features, negatives), [word for part in words for word in part]
    sets = [encoded.id_test[DEFAULT_VIEW].features, *(views[DEFAULT_VIEW].features for views in encoded.ood.values())]
    keys = needed_pairs(sets, labels, exp.options.value(NEGREFINE_TOP_K))
    texts = [f"{names[i]} and {flat[j]}" for i, j in keys]
    exp.artifacts["negrefine_words"] = [f"{word}\t{pos}" for part, pos in zip(words, PARTS_OF_SPEECH, strict=True)
                                        for word in part]  # fmt: skip
    pair_features = text_embeddings(exp.bundle, texts, CSP_PROMPTS["noun"], exp.cache, "raw")
    return MultiMatching(labels, {key: row for row, key in enumerate(keys)}, pair_features)


def _logit_scale(exp: Experiment) -> float:
    """The scale of the label-mass softmaxes: a fine-tuned checkpoint's learned one; a SigLIP-family model's own
    (its bias shifts every logit alike, so a softmax ignores it); else CLIP's 100 (OpenAI CLIP's learned value)."""
    from utils.models.logits import zero_shot_logit_scale

    if exp.contract is not None:
        return exp.contract.logit_scale
    model = getattr(exp.bundle, "model", None)
    return CLIP_LOGIT_SCALE if model is None else zero_shot_logit_scale(model)


def _pood_head(exp: Experiment, encoded: Encoded) -> Head:
    """The head pytorch-ood's detectors read: the zero-shot classifier (the run's class prompts at the label-mass
    scores' scale, 100 for CLIP, plus a SigLIP model's bias), or the linear probe of the lp_* scores (--pood-head)."""
    from utils.features.text import text_embeddings

    if exp.options.value(POOD_HEAD) == "probe":
        return Head.probe(encoded.id_train.features, encoded.id_train.labels)
    text = encoded.text if encoded.text is not None else text_embeddings(exp.bundle, exp.id_test.classnames,
                                                                         exp.options.templates)  # fmt: skip
    bias = getattr(exp.bundle.model, "logit_bias", None)
    return Head.zero_shot(text, _logit_scale(exp), 0.0 if bias is None else float(bias))


def _check_pood_head(exp: Experiment) -> None:
    if exp.options.value(POOD_HEAD) == "probe":
        _check_train(exp)
    else:
        _check_classnames(exp)


def _pood_head_missing(exp: Experiment) -> str | None:
    from utils.models.loading import has_text_encoder

    if exp.options.value(POOD_HEAD) == "probe" or has_text_encoder(exp.model_name):
        return None
    return (f"reads the zero-shot head (--pood-head zero_shot), which needs a text encoder; {exp.model_name} is "
            f"image-only: --pood-head probe reads the linear probe instead")  # fmt: skip


RESOLVERS: dict[str, Resolver] = {
    # InDistribution fields (`needs`)
    "text_features": Resolver(lambda exp, enc: enc.text, check=_check_classnames, missing=_image_only),
    "train_features": Resolver(lambda exp, enc: enc.id_train.features, check=_check_train, uses_train=True),
    "train_labels": Resolver(lambda exp, enc: enc.id_train.labels, check=_check_train, uses_train=True),
    # constructor inputs (`inputs`)
    "classnames": Resolver(lambda exp, enc: list(exp.id_test.classnames), check=_check_classnames),
    "seed": Resolver(lambda exp, enc: exp.options.seed),
    "device": Resolver(lambda exp, enc: exp.bundle.device),
    "ood_text_features": Resolver(_ood_class_names),
    "negative_labels": Resolver(
        _mined(NEGLABEL_MINING),
        check=_words_checked(NEGLABEL_MINING),
        missing=_image_only,
        settings=(NEG_WORDS, NEG_FRACTION, NEG_PERCENTILE),
    ),
    "adaneg_labels": Resolver(
        _mined(ADANEG_MINING),
        check=_words_checked(ADANEG_MINING),
        missing=_image_only,
        settings=(NEG_WORDS, NEG_PERCENTILE, ADANEG_NEGATIVES),
    ),
    "csp_labels": Resolver(
        _mined(CSP_MINING),
        check=_words_checked(CSP_MINING),
        missing=_image_only,
        settings=(CSP_WORDS, NEG_FRACTION, NEG_PERCENTILE),
    ),
    "envisioned_features": Resolver(_envisioned, check=_check_envisioned, missing=_image_only, settings=(EOE_NAMES,)),
    "negrefine_labels": Resolver(
        _negrefine, check=_check_negrefine, missing=_image_only, settings=(NEGREFINE_WORDS, NEGREFINE_TOP_K)
    ),
    "logit_scale": Resolver(lambda exp, enc: _logit_scale(exp)),
    "head": Resolver(
        _pood_head,
        check=_check_pood_head,
        missing=_pood_head_missing,
        settings=(POOD_HEAD,),
        uses_train=lambda options: options.value(POOD_HEAD) == "probe",
    ),
    # a setting with more to it than the run's value: KNN's k defaults to the ID set's and must fit its train split
    "k": Resolver(lambda exp, enc: _ks(exp), check=_check_ks, uses_train=True),
}


def requirements(score: str) -> tuple[str, ...]:
    """Every name a score needs from the run: its InDistribution fields, then its constructor arguments."""
    return (*SCORES[score].needs, *SCORES[score].arguments())


def settings_read(score: str) -> tuple[Setting, ...]:
    """Every setting `score` reads: its own, then those the resolvers of its inputs read."""
    found = list(SCORES[score].settings)
    for name in requirements(score):
        found += [s for s in getattr(RESOLVERS.get(name), "settings", ()) if s not in found]
    return tuple(found)


def score_settings() -> dict[str, tuple[Setting, list[str]]]:
    """name -> (the setting, the scores that read it), over the registry as it stands: what eval_ood_detection.py's
    flags, EvalOptions.settings and --select's grids are made from."""
    return collect((name, settings_read(name)) for name in SCORES)


def _setting(setting: Setting) -> Resolver:
    return Resolver(lambda exp, enc: exp.options.value(setting))


def _check_templates(exp: Experiment) -> None:
    """A note when the class prompts differ from those the checkpoint's method trained its class prompts with."""
    trained, used = exp.contract.class_templates, tuple(template_text(t) for t in exp.options.templates)
    if trained and used != trained and not any("trained with" in note for note in exp.notes):
        shown = trained[0] if len(trained) == 1 else f"{len(trained)} templates ({trained[0]!r}, ...)"
        exp.notes.append(f"the checkpoint's class prompts were trained with {shown!r}, scored here with "
                         f"{used[0]!r}{' and others' if len(used) > 1 else ''}: pass the training templates "
                         f"with --templates to score as trained")  # fmt: skip


def _from_checkpoint(name: str) -> Resolver:
    """An input that a fine-tuned checkpoint supplies: prompts encoded by its text tower, or a plain value."""

    def missing(exp: Experiment) -> str | None:
        if exp.contract is not None and name in exp.contract.inputs:
            return None
        methods = [cls.supplied_by for cls in SCORES.values() if name in cls.inputs and cls.supplied_by]
        source = " or ".join(f"finetune_clip.py --method {m}" for m in methods) or "a fine-tuning method"
        given = "" if exp.contract is None else f" (the --ckpt given was trained with --method {exp.contract.method})"
        return f"needs {name}, which a checkpoint of {source} supplies: pass one with --ckpt{given}"

    def check(exp: Experiment) -> None:
        if exp.contract is None or name not in exp.contract.learned:
            return
        used = tuple(template_text(t) for t in exp.options.templates)
        if exp.contract.class_templates and used != exp.contract.class_templates:
            raise UserError(f"{name} are learned beside the checkpoint's own class prompts; --templates replaces "
                            f"those with {used[0]!r}: drop --templates to score what was trained together")  # fmt: skip

    def resolve(exp: Experiment, encoded: Encoded) -> Any:
        from utils.features.text import learned_prompt_features, text_embeddings

        _check_templates(exp)
        if name in exp.contract.texts:
            return text_embeddings(exp.bundle, exp.contract.texts[name])
        if name in exp.contract.learned:
            if tuple(exp.id_test.classnames) != exp.contract.classnames:
                exp.notes.append(f"{name}: learned for the checkpoint's {len(exp.contract.classnames)} ID classes, "
                                 f"scored here beside {exp.id_test.name}'s own names (a transfer)")  # fmt: skip
            return learned_prompt_features(exp.bundle, exp.contract.learned[name], exp.id_test.classnames)
        return exp.contract.values[name]

    return Resolver(resolve, check=check, missing=missing)


def resolver(name: str) -> Resolver:
    if name in RESOLVERS:
        return RESOLVERS[name]
    declared = score_settings()
    return _setting(declared[name][0]) if name in declared else _from_checkpoint(name)


def needs_train(scores: Sequence[str], options: EvalOptions) -> bool:
    """Whether any of `scores` reads the ID train split under `options` (so the run loads it and encodes it)."""
    uses = [resolver(name).uses_train for score in scores for name in requirements(score)]
    return any(use(options) if callable(use) else use for use in uses)


def unavailable(score: str, exp: Experiment) -> str | None:
    """Why `score` cannot run in this experiment (its features' view, then its first missing requirement), or None."""
    from utils.models.loading import has_patch_tokens

    if SCORES[score].view == "local" and not has_patch_tokens(exp.model_name):
        return f"needs patch tokens of an open_clip ViT (the local view); {exp.model_name} has none"
    return next((reason for name in requirements(score) if (reason := resolver(name).missing(exp))), None)


def check(scores: Sequence[str], exp: Experiment) -> None:
    """Every requirement of `scores` that can be checked before any image is encoded."""
    for name in dict.fromkeys(n for score in scores for n in requirements(score)):
        resolver(name).check(exp)


def enabled_by(contract: ScoreContract | None) -> list[str]:
    """The scores that run only with a fine-tuned checkpoint's inputs, and that this checkpoint can feed."""
    supplied, run_supplied = contract.inputs if contract else set(), {*RESOLVERS, *score_settings()}
    return [name for name in SCORES if (own := set(requirements(name)) - run_supplied) and own <= supplied]

"""CoOp and LoCoOp: the learned prompt against CoOp's text encoder, LoCoOp's regulariser against its official code,
CoOp's schedule against Dassl's, few-shot training with CLIP frozen, and scoring with the learned prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval_ood_detection
import finetune_clip
from utils.errors import UserError
from utils.features.text import text_embeddings
from utils.models.checkpoint import class_templates, read_checkpoint
from utils.models.local_tokens import entropy_outside_top_k, global_and_patches
from utils.models.prompt_context import LearnedTemplate, PromptContext, initial_context
from utils.prompts import TEMPLATE_SETS
from utils.training.loop import constant_warmup_epoch_cosine
from utils.training.prompt_learning import LoCoOpObjective

NAMES = ["digit zero", "digit one", "sea lion"]
CLASSES = ["digit zero", "digit one", "digit two", "digit three", "digit four"]
TINY = ["--model", "tiny", "--pretrained", "none", "--workers", "0"]


def _coop_text_encoder(model, tokenizer, ctx: torch.Tensor, names: list[str]) -> torch.Tensor:
    """CoOp's PromptLearner + TextEncoder (trainers/coop.py) restated: [SOS] + ctx + suffix embeddings, then CLIP."""
    prompts = tokenizer([" ".join(["X"] * len(ctx)) + " " + name + "." for name in names])
    embedding = model.token_embedding(prompts)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + len(ctx) :]
    x = torch.cat([prefix, ctx.expand(len(names), -1, -1), suffix], dim=1) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    x = x[torch.arange(len(names)), prompts.argmax(dim=-1)] @ model.text_projection
    return x / x.norm(dim=-1, keepdim=True)


@torch.no_grad()
def test_learned_prompt_equals_coops_text_encoder(tiny):
    ctx = initial_context(tiny.model, tiny.tokenizer, 16, seed=3)
    ours = text_embeddings(tiny, NAMES, (LearnedTemplate(PromptContext(ctx)),))
    np.testing.assert_allclose(ours, _coop_text_encoder(tiny.model, tiny.tokenizer, ctx, NAMES).numpy(), atol=1e-6)


@torch.no_grad()
def test_context_from_words_reproduces_the_hand_written_prompt(tiny):
    ctx = initial_context(tiny.model, tiny.tokenizer, 16, init="a photo of a")
    assert ctx.shape == (4, tiny.model.token_embedding.embedding_dim)  # the words set the length, as CoOp's CTX_INIT
    learned = text_embeddings(tiny, NAMES, (LearnedTemplate(PromptContext(ctx)),))
    np.testing.assert_allclose(learned, text_embeddings(tiny, NAMES, TEMPLATE_SETS["single"]), atol=1e-6)


def test_random_context_is_seeded_with_coops_spread(tiny):
    a, b = (initial_context(tiny.model, tiny.tokenizer, 16, seed=s) for s in (0, 0))
    assert torch.equal(a, b) and not torch.equal(a, initial_context(tiny.model, tiny.tokenizer, 16, seed=1))
    assert a.shape == (16, 64) and abs(a.std().item() - 0.02) < 0.002


def test_bad_contexts_are_refused(tiny):
    with pytest.raises(UserError, match="one token"):
        initial_context(tiny.model, tiny.tokenizer, 16, init="a xylophonist of a")  # "xylophonist" is four tokens
    with pytest.raises(UserError, match="cannot be averaged"):
        text_embeddings(tiny, NAMES, (LearnedTemplate(PromptContext(torch.zeros(2, 64))), "a {}"))


def _official_entropy_select_topk(p, top_k, label, num_of_local_feature):
    """LoCoOp's trainers/locoop.py entropy_select_topk, as released (on CPU)."""
    label_repeat = label.repeat_interleave(num_of_local_feature)
    p = F.softmax(p, dim=-1)
    pred_topk = torch.topk(p, k=top_k, dim=1)[1]
    contains_label = pred_topk.eq(label_repeat.unsqueeze(1)).any(dim=1)
    selected_p = p[~contains_label]
    if selected_p.shape[0] == 0:
        return torch.tensor([0])
    return -torch.mean(torch.sum(selected_p * torch.log(selected_p + 1e-5), 1))


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_locoop_regions_and_entropy_equal_the_official_code(top_k):
    generator = torch.Generator().manual_seed(top_k)
    logits, labels = torch.randn(3, 7, 5, generator=generator) * 4, torch.tensor([0, 3, 4])
    expected = _official_entropy_select_topk(logits.reshape(21, 5), top_k, labels, 7)
    assert entropy_outside_top_k(logits, labels, top_k).item() == pytest.approx(expected.item(), rel=1e-6)
    assert entropy_outside_top_k(logits, labels, 5).item() == 0  # every label is in the top 5 of 5: no OOD region


def test_locoop_loss_is_coops_minus_lambda_entropy(tiny):
    objective = LoCoOpObjective(tiny, CLASSES, TEMPLATE_SETS["single"], locoop_lambda=0.25, locoop_top_k=2)
    images, labels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        pooled, patches = global_and_patches(tiny.model.visual, images)
        text = _coop_text_encoder(tiny.model, tiny.tokenizer, objective.context.vectors, CLASSES)
        scale = tiny.model.logit_scale.exp()
        pooled, patches = pooled / pooled.norm(dim=-1, keepdim=True), patches / patches.norm(dim=-1, keepdim=True)
        local = (scale * patches @ text.T).reshape(-1, len(CLASSES))
        expected = F.cross_entropy(scale * pooled @ text.T, labels) - 0.25 * _official_entropy_select_topk(
            local, 2, labels, patches.shape[1]
        )
        assert objective(images, labels, None, [0]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_locoop_top_k_is_a_fifth_of_the_classes_within_bounds(tiny):
    assert LoCoOpObjective(tiny, CLASSES, ()).top_k == 1
    assert LoCoOpObjective(tiny, [f"c{i}" for i in range(1000)], ()).top_k == 200  # the paper's ImageNet-1k value
    with pytest.raises(UserError, match="top-K"):
        LoCoOpObjective(tiny, CLASSES, (), locoop_top_k=5)


def test_coop_schedule_equals_dassls_warmup_around_cosine():
    """Dassl's ConstantWarmupScheduler(CosineAnnealingLR(T_max=E), warmup_epoch=1, cons_lr=1e-5), stepped per epoch."""
    epochs, per_epoch, base = 5, 3, 0.002
    successor_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(successor_opt, T_max=epochs)
    expected = [1e-5]
    for _ in range(1, epochs):  # from the second epoch on, the cosine is stepped once per epoch after the first
        expected.append(successor.get_last_lr()[0])
        successor_opt.step()
        successor.step()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    ours = constant_warmup_epoch_cosine(optimizer, per_epoch, epochs)
    rates = []
    for _ in range(epochs * per_epoch):
        rates.append(ours.get_last_lr()[0])
        optimizer.step()
        ours.step()
    assert rates == pytest.approx(np.repeat(expected, per_epoch).tolist(), rel=1e-9)
    assert rates[-1] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 3 / 5)))


@pytest.mark.parametrize("method", ["coop", "locoop"])
def test_few_shot_prompt_learning_keeps_clip_frozen_and_scores_with_the_learned_prompts(tmp_path, method, tiny):
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    summary = finetune_clip.main(["--in", "digits", "--method", method, *TINY, "--shots", "16", "--epochs", "3",
                                  "--lr", "0.02", "--out-dir", str(run), "--cache-dir", cache])  # fmt: skip
    saved = torch.load(run / "final.pt", weights_only=True)
    assert saved["config"]["shots"] == 16 and saved["config"]["optimizer"] == "sgd"
    assert saved["config"]["batch_size"] == 32 and saved["config"]["schedule"] == "coop"  # the papers' defaults
    base = tiny.model.state_dict()
    assert all(torch.equal(saved["state_dict"][k], base[k]) for k in base)  # CLIP unchanged, bit for bit
    contract = read_checkpoint(str(run / "final.pt")).contract
    start = initial_context(tiny.model, tiny.tokenizer, 16, seed=0)
    assert np.asarray(contract.context).shape == (16, 64) and not np.allclose(contract.context, start.numpy())
    (learned,) = class_templates(None, contract)
    assert isinstance(learned, LearnedTemplate)
    argv = ["--in", "digits", *TINY, "--ckpt", str(run / "final.pt"), "--score", "mcm", "gl_mcm", "--no-plots",
            "--cache-dir", cache]  # fmt: skip
    result = eval_ood_detection.main([*argv, "--out-dir", str(tmp_path / "eval")])
    assert result["accuracy"]["zero_shot_top1"] == pytest.approx(summary["zero_shot_top1"])  # the same learned head
    assert set(result["metrics"]) == {"mcm", "gl_mcm"}
    by_hand = eval_ood_detection.main([*argv, "--templates", "single", "--out-dir", str(tmp_path / "hand")])
    assert by_hand["metrics"]["mcm"] != result["metrics"]["mcm"]


def test_neglabel_prompts_its_id_labels_with_the_learned_context(tmp_path, tiny):
    from utils.data.splits import load_dataset
    from utils.evaluation.inputs import RESOLVERS, Encoded, Experiment
    from utils.evaluation.options import EvalOptions
    from utils.features.store import FeatureCache
    from utils.prompts import NEGLABEL_PROMPTS

    words = tmp_path / "words.txt"
    words.write_text("".join(f"{w}\tnoun\n" for w in ["tree", "car", "lamp", "river", "cloud", "shoe", "bread"]))
    learned = (LearnedTemplate(PromptContext(initial_context(tiny.model, tiny.tokenizer, 4, seed=1))),)
    for templates, id_prompts in ((learned, learned), (TEMPLATE_SETS["single"], NEGLABEL_PROMPTS["noun"])):
        exp = Experiment(EvalOptions(templates=templates, settings={"neg_words": str(words)}), "tiny", bundle=tiny,
                         id_test=load_dataset("digits"), cache=FeatureCache(str(tmp_path / "cache")))  # fmt: skip
        labels = RESOLVERS["negative_labels"].resolve(exp, Encoded({}, {}))
        expected = text_embeddings(tiny, CLASSES, id_prompts)
        np.testing.assert_allclose(labels.id_features, expected, atol=1e-6)
        assert len(labels.negatives) == 1  # int(0.15 * 7) nouns


def test_coop_augments_as_dassl_at_the_models_size_and_normalisation(tiny):
    from torchvision import transforms

    from utils.training.prompt_learning import CoOpObjective

    steps = CoOpObjective(tiny, CLASSES, ()).train_transform().transforms
    crop = next(s for s in steps if isinstance(s, transforms.RandomResizedCrop))
    assert crop.size == (32, 32) and crop.scale == (0.08, 1.0)
    assert crop.interpolation == transforms.InterpolationMode.BICUBIC
    assert any(isinstance(s, transforms.RandomHorizontalFlip) for s in steps)
    ours = next(s for s in steps if isinstance(s, transforms.Normalize))
    model = next(s for s in tiny.preprocess.transforms if isinstance(s, transforms.Normalize))
    assert (ours.mean, ours.std) == (model.mean, model.std)


def test_coop_on_a_resnet_keeps_its_batchnorm_in_eval_mode():
    from utils.models.loading import load_model
    from utils.training.prompt_learning import CoOpObjective

    bundle = load_model("RN50", "none", device="cpu")
    objective = CoOpObjective(bundle, CLASSES, ())
    objective.train()
    assert not bundle.model.training and objective.training  # BatchNorm statistics stay CLIP's
    assert objective.train_transform().transforms[0].size == (224, 224)  # open_clip's ResNets keep an int size


def test_a_learned_context_wins_over_a_presets_templates_not_over_the_command_line():
    from argparse import Namespace

    from utils.models.checkpoint import ScoreContract

    contract = ScoreContract("locoop", tuple(CLASSES), 100.0, context=((0.1,) * 64,) * 4)
    from_preset, notes = eval_ood_detection.class_prompts(Namespace(templates="mcm", given=[]), contract)
    assert isinstance(from_preset[0], LearnedTemplate) and "not the preset's --templates mcm" in notes[0]
    written, notes = eval_ood_detection.class_prompts(Namespace(templates="mcm", given=["templates"]), contract)
    assert written == TEMPLATE_SETS["mcm"] and not notes
    plain, _ = eval_ood_detection.class_prompts(Namespace(templates=None, given=[]), None)
    assert plain == TEMPLATE_SETS["single"]

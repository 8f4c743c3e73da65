"""NegPrompt and ID-Like: losses, schedule, crop selection and scores restated from the releases and compared."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eval_ood_detection
import finetune_clip
from utils.errors import UserError
from utils.features.text import encode_texts
from utils.models.checkpoint import LearnedPrompts, ScoreContract, read_checkpoint
from utils.models.prompt_context import ContextBatch, PromptContext, placeholder_prompt
from utils.scores import InDistribution, build_score
from utils.training.idlike import MultiCrop, idlike_loss, split_crops
from utils.training.loop import negprompt_cosine
from utils.training.negprompt import negprompt_loss

QUICK = ["--in", "digits", "--model", "tiny", "--pretrained", "none", "--workers", "0", "--limit", "40"]


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --- NegPrompt (mala-lab/NegPrompt d4569a9) ---


def _release_negprompt_loss(output, text_features, labels, n_nega_ctx, weights):
    """core/train_clip.py train_nega_clip, stage > 1, open_set_method 'MSP', prototype_weight 0 (cuda dropped)."""
    negative_weight, distance_weight, nega_nega_weight = weights
    output_posi = output.view(-1, int(output.shape[1] / (1 + n_nega_ctx)), 1 + n_nega_ctx)[:, :, 0]
    ensemble_text_features = text_features.view(int(text_features.shape[0] / (1 + n_nega_ctx)), 1 + n_nega_ctx, -1)
    positive_text_features = ensemble_text_features[:, 0, :]
    negative_text_features = ensemble_text_features[:, 1:, :]
    loss_positive = F.cross_entropy(output_posi, labels) * 1e-8
    loss_nega_to_nega = 0
    for i in range(negative_text_features.shape[0]):
        negative_features = negative_text_features[i, :, :].float()
        negative_features_mean = torch.mean(negative_features, dim=0, keepdim=True)
        negative_features_mean_norm = negative_features_mean.norm(dim=-1, keepdim=True)
        negative_features_norm = negative_features.norm(dim=-1, keepdim=True)
        dot_product = negative_features_norm @ negative_features_mean_norm.t()
        loss_nega_to_nega += -torch.mean(1 - dot_product)
    loss_nega_to_nega /= negative_text_features.shape[0]
    soft_target = torch.zeros(output.shape).long()
    idx = torch.arange(output.shape[0])
    soft_target.view(soft_target.shape[0], int(output.shape[1] / (1 + n_nega_ctx)), -1)[idx, labels, :] = 1
    loss_nega_to_other = nn.MultiLabelSoftMarginLoss(reduction="mean")(output, soft_target)
    all_class_dis = 0
    for i in range(negative_text_features.shape[0]):
        positive_feature = positive_text_features[i : i + 1, :].float()
        negative_feature = negative_text_features[i, :, :].float()
        positive_feature_norm = positive_feature / positive_feature.norm(dim=-1, keepdim=True)
        negative_feature_norm = negative_feature / negative_feature.norm(dim=-1, keepdim=True)
        dot_product = positive_feature_norm @ negative_feature_norm.t()
        all_class_dis += (1 - dot_product).mean()
    loss_nega_to_posi = -all_class_dis / negative_text_features.shape[0]
    return (loss_positive + negative_weight * loss_nega_to_other + distance_weight * loss_nega_to_posi
            + nega_nega_weight * loss_nega_to_nega)  # fmt: skip


def test_negprompt_loss_equals_the_release():
    classes, negatives, batch, dim = 5, 2, 6, 16
    text = _unit(classes, 1 + negatives, dim, seed=1)  # class-major [pos, neg1, neg2]
    images = _unit(batch, dim, seed=2)
    labels = torch.tensor([0, 3, 4, 1, 1, 2])
    output = 100 * images @ text.reshape(-1, dim).T
    weights = (1.0, 0.1, 0.05)
    ours = negprompt_loss(output.reshape(batch, classes, -1), text[:, 0], text[:, 1:], labels, *weights)
    release = _release_negprompt_loss(output, text.reshape(-1, dim), labels, negatives, weights)
    assert ours.item() == pytest.approx(release.item(), rel=1e-6, abs=1e-7)
    assert negprompt_loss(output.reshape(batch, classes, -1), text[:, 0], text[:, 1:], labels, 0, 0, 0).item() == \
        pytest.approx(1e-8 * F.cross_entropy(output.reshape(batch, classes, -1)[:, :, 0], labels).item())  # fmt: skip


def test_negprompt_score_equals_the_release():
    """core/test_clip.py: logits / logit_scale (cosines), one softmax over all C·(1 + N) prompts, the positive part's
    maximum over classes; ours is its log."""
    classes, negatives, dim = 4, 2, 8
    text = _unit(classes, 1 + negatives, dim, seed=3)
    images = _unit(30, dim, seed=4)
    softmax = F.softmax(images @ text.reshape(-1, dim).T, dim=1).view(-1, classes, 1 + negatives)
    release = softmax[:, :, 0].max(dim=1).values.double().numpy()
    score = build_score("negprompt", negative_prompt_features=text[:, 1:].transpose(0, 1).numpy())
    ours = score.fit(InDistribution(text_features=text[:, 0].numpy()))(images.numpy())
    assert np.allclose(np.exp(ours), release, rtol=1e-5)


def test_negprompt_schedule_is_the_releases_stepped_per_batch_and_per_epoch():
    """CosineAnnealingLR(T_max = 50) stepped after each batch and after each epoch; a new one for stage 2."""
    steps_per_epoch, epochs, restart = 7, 30, 20

    def release_rates(epoch_count):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=0.1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(50))
        rates = []
        for _ in range(epoch_count):
            for _ in range(steps_per_epoch):
                rates.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            scheduler.step()
        return rates

    expected = release_rates(restart) + release_rates(epochs - restart)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    ours = negprompt_cosine(optimizer, steps_per_epoch, restart * steps_per_epoch)
    got = []
    for _ in range(epochs * steps_per_epoch):
        got.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        ours.step()
    assert np.allclose(got, expected, atol=1e-12)
    assert min(got) < 1e-4 and math.isclose(got[restart * steps_per_epoch], 0.1)  # it cycles, and restarts


def test_each_prompt_of_a_context_batch_gets_its_own_vectors(tiny):
    """One forward with per-prompt contexts equals each prompt encoded with its own PromptContext."""
    width = tiny.model.token_embedding.embedding_dim
    vectors = torch.randn(3, 5, width, generator=torch.Generator().manual_seed(0)) * 0.02
    batch = ContextBatch(vectors, "")
    together = encode_texts(tiny, [batch.prompt(n) for n in ("cat", "dog", "")], batch)
    for k, name in enumerate(("cat", "dog", "")):
        alone = encode_texts(tiny, [placeholder_prompt(5, name, "")], PromptContext(vectors[k], ""))
        assert torch.allclose(together[k], alone[0], atol=1e-6)
    assert placeholder_prompt(2, "cat", "") == "X X cat" and placeholder_prompt(2, "", ".") == "X X ."


def test_a_contract_with_learned_prompts_survives_the_round_trip():
    learned = LearnedPrompts.of(torch.arange(24.0).reshape(2, 3, 4), None, "")
    contract = ScoreContract("negprompt", ("a", "b"), 100.0, context=((1.0, 2.0),), context_suffix="",
                             learned={"negative_prompt_features": learned})  # fmt: skip
    again = ScoreContract.from_dict(contract.to_dict(), "x.pt")
    assert again == contract and torch.equal(again.learned["negative_prompt_features"].tensor(), learned.tensor())
    saved = contract.to_dict()
    saved["learned"]["negative_prompt_features"]["contexts"] = [[[1.0, 2.0]], [[1.0]]]
    with pytest.raises(UserError, match="damaged"):
        ScoreContract.from_dict(saved, "x.pt")


def _finetune(tmp_path, method, *extra, out="run"):
    return finetune_clip.main([*QUICK, "--method", method, "--out-dir", str(tmp_path / out), "--cache-dir",
                               str(tmp_path / "cache"), *extra])  # fmt: skip


def test_negprompt_trains_the_positive_then_only_the_negatives(tiny):
    """Stage 1: the positive context gets a gradient, the negatives none; stage 2 starts the negatives at copies of
    the positive context (within the release's ±1e-5 noise), then only they get one."""
    import copy

    from utils.training.negprompt import NegPromptObjective

    bundle = copy.deepcopy(tiny)
    names = ["digit zero", "digit one", "digit two"]
    objective = NegPromptObjective(bundle, names, [], negprompt_ctx_init="", positive_epochs=1, seed=0)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    objective(images, labels, None, [0, 0, 0, 0]).backward()
    assert objective.context.vectors.grad is not None and objective.negatives.grad is None
    assert not bool(objective.negatives_started)
    objective.context.vectors.grad = None
    loss = objective(images, labels, None, [0, 1, 0, 0])
    assert bool(objective.negatives_started)
    start = objective.negatives.detach().clone()
    assert (start - objective.context.vectors.detach()).abs().max() <= 1e-5 and not torch.equal(start[0], start[1])
    loss.backward()
    assert objective.negatives.grad is not None and objective.negatives.grad.abs().sum() > 0
    assert objective.context.vectors.grad is None
    contract = objective.contract("negprompt")
    assert contract.context_suffix == "" and contract.learned["negative_prompt_features"].tensor().shape == (2, 16, 64)


def test_negprompt_needs_an_epoch_for_its_negatives(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _finetune(tmp_path, "negprompt", "--epochs", "1", "--positive-epochs", "1")
    assert "leaves NegPrompt's negatives no epoch" in capsys.readouterr().err


def test_negprompt_checkpoint_scores_with_its_own_prompts(tmp_path, capsys):
    _finetune(tmp_path, "negprompt", "--epochs", "2", "--positive-epochs", "1", "--batch-size", "16")
    ckpt = str(tmp_path / "run" / "final.pt")
    argv = [*QUICK, "--ckpt", ckpt, "--score", "mcm", "negprompt", "--no-plots", "--out-dir", str(tmp_path / "e"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = eval_ood_detection.main(argv)
    assert set(result["metrics"]) == {"mcm", "negprompt"}
    from utils.evaluation.inputs import enabled_by

    assert "negprompt" in enabled_by(read_checkpoint(ckpt).contract)  # --score all runs it with this checkpoint
    # the scores saved equal the release's formula on the checkpoint's prompts, encoded here one context at a time
    from utils.data.splits import DataOptions
    from utils.models.loading import load_model

    checkpoint = read_checkpoint(ckpt)
    bundle = load_model("tiny", "none", ckpt=checkpoint)
    names = list(checkpoint.contract.classnames)
    with torch.no_grad():
        positive = encode_texts(bundle, [f"X X X X {n}" for n in names], PromptContext(torch.tensor(
            checkpoint.contract.context), ""))  # fmt: skip
        contexts = checkpoint.contract.learned["negative_prompt_features"].tensor()
        negative = torch.cat([encode_texts(bundle, [f"X X X X {n}" for n in names], PromptContext(context, ""))
                              for context in contexts])  # fmt: skip
        ood = DataOptions(limit=40).load("digits_ood", "test")
        images = torch.stack([bundle.preprocess(ood.dataset[i][0]) for i in range(len(ood.dataset))])
        feats = F.normalize(bundle.model.encode_image(images), dim=-1)
        probs = F.softmax(torch.cat([feats @ positive.T, feats @ negative.T], dim=1), dim=1)
        expected = torch.log(probs[:, : len(names)].max(dim=1).values).numpy()
    saved = np.load(tmp_path / "e" / "scores.npz")["negprompt/digits_ood/ood"]
    assert np.allclose(saved, expected, atol=5e-3)  # the cache keeps features in float16
    # other ID names beside the learned negatives: scored (NegPrompt transfers), and said
    renamed = eval_ood_detection.main([*argv, "--classnames", "zero,one,two,three,four", "--overwrite"])
    assert any("negative_prompt_features: learned for the checkpoint's 5 ID classes" in n for n in renamed["notes"])
    assert not any("learned for the checkpoint" in n for n in result["notes"])
    with pytest.raises(SystemExit):  # hand-written class prompts beside learned negatives: refused
        eval_ood_detection.main([*argv, "--templates", "single", "--overwrite"])
    assert "drop --templates" in capsys.readouterr().err


# --- ID-Like (ycfate/ID-like 9acb908) ---


def _release_idlike_loss(prompt_features, features_in, features_out, targets_in, n_cls, lam_out, lam_diff):
    """utils/id_like_loss.py get_loss (cuda dropped; lam_in 1)."""
    prompt_features_out = prompt_features[n_cls:, ...]
    loss_in = F.cross_entropy(100 * features_in @ prompt_features.t(), targets_in)
    probs = F.softmax(100 * features_out @ prompt_features.t(), dim=1)
    flag_out = torch.cat([torch.LongTensor([0] * n_cls + [1] * (len(prompt_features) - n_cls))], dim=0)
    loss_out = torch.mean(torch.log(torch.sum(probs * (1 - flag_out), dim=1) + 1e-16))
    loss_diff = torch.FloatTensor([0.0])
    for p in range(prompt_features_out.size(0) - 1):
        for q in range(p + 1, prompt_features_out.size(0)):
            first, second = prompt_features_out[p].unsqueeze(0), prompt_features_out[q].unsqueeze(0)
            loss_diff += F.cosine_embedding_loss(first, second, torch.LongTensor([-1]))
    loss_diff /= prompt_features_out.size(0) * (prompt_features_out.size(0) - 1) / 2.0
    return loss_in + loss_out * lam_out + loss_diff * lam_diff


def test_idlike_loss_equals_the_release():
    classes, prompts, dim = 6, 9, 12
    text = _unit(classes + prompts, dim, seed=5)
    inside, outside = _unit(8, dim, seed=6), _unit(8, dim, seed=7)
    targets = torch.tensor([2] * 4 + [5] * 4)
    ours = idlike_loss(100 * inside @ text.T, 100 * outside @ text.T, text[classes:], targets, classes, 0.3, 0.2)
    release = _release_idlike_loss(text, inside, outside, targets, classes, 0.3, 0.2)
    assert ours.item() == pytest.approx(release.item(), rel=1e-6)


def test_idlike_selects_the_crops_the_release_selects():
    """get_in_out / select_in_out: the top-n and bottom-n crops by max similarity to the class prompt."""
    crops, prompt = _unit(40, 10, seed=8), _unit(10, seed=9)
    inside, outside = split_crops(crops, prompt, 5)
    sim = torch.max(crops @ prompt[None].t(), dim=1, keepdim=True)[0]
    release_in = torch.index_select(crops, index=torch.topk(sim, dim=0, k=5)[1].squeeze(), dim=0)
    release_out = torch.index_select(crops, index=torch.topk(-sim, dim=0, k=5)[1].squeeze(), dim=0)
    assert torch.equal(inside, release_in) and torch.equal(outside, release_out)
    assert (inside @ prompt).min() > (outside @ prompt).max()


def test_idlike_score_is_the_releases_id_mass_as_log_odds():
    """get_result: softmax(100 · cos) over the C + P prompts, 1 − Σ p_OOD; ours is its logit."""
    classes, dim = 5, 8
    text, images = _unit(classes + 7, dim, seed=10), _unit(25, dim, seed=11)
    probs = F.softmax(100 * images @ text.T, dim=1).double()
    release = 1 - probs[:, classes:].sum(dim=1)
    score = build_score("idlike", idlike_ood_features=text[classes:, None].numpy(), logit_scale=100.0)
    ours = score.fit(InDistribution(text_features=text[:classes].numpy()))(images.numpy())
    assert np.allclose(1 / (1 + np.exp(-ours)), release.numpy(), atol=1e-6)


def test_multicrop_is_seeded_and_shaped_as_the_releases(tiny):
    from PIL import Image
    from torchvision import transforms

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    crop = MultiCrop(6, 32, tiny.preprocess)
    resized, flip = crop.crop.transforms[:2]  # the release's RandomResizedCrop(224) with torchvision's defaults
    assert isinstance(resized, transforms.RandomResizedCrop) and isinstance(flip, transforms.RandomHorizontalFlip)
    assert (resized.size, resized.scale, resized.ratio) == ((32, 32), (0.08, 1.0), (3 / 4, 4 / 3))
    assert resized.interpolation == transforms.InterpolationMode.BILINEAR
    torch.manual_seed(4)
    first = crop(image)
    torch.manual_seed(4)
    assert first.shape == (6, 3, 32, 32) and torch.equal(crop(image), first)
    assert not torch.equal(first[0], first[1])  # each crop is its own draw


@pytest.mark.parametrize(("extra", "expected"), [
    (["--idlike-crops", "8", "--idlike-selected", "5"], "need at least 10 crops"),
    (["--augment", "model"], "ID-Like trains on its own random crops"),
])  # fmt: skip
def test_idlike_refuses_settings_it_cannot_train_with(tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit):
        _finetune(tmp_path, "idlike", *extra)
    assert expected in capsys.readouterr().err


def test_negprompt_stage_two_is_the_releases_loss_through_the_text_tower(tiny):
    """Stage 2's forward against the release's train_nega_clip on the same model: its prompts built as the release's
    NegaPromptLearner (SOS, the context, the class name's tokens) and encoded by CLIP's own text forward."""
    import copy

    from utils.training.negprompt import NegPromptObjective

    bundle = copy.deepcopy(tiny)
    names = ["digit zero", "digit one", "digit two"]
    objective = NegPromptObjective(bundle, names, [], negprompt_ctx_init="", positive_epochs=1, seed=0)
    images, labels = (
        torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 2, 1, 1, 0]),
    )
    with torch.no_grad():
        ours = objective(images, labels, None, [0, 1, 0, 0])
        model = bundle.model
        tokens = bundle.tokenizer([" ".join(["X"] * 16 + [n]) for n in names])
        embedded = model.token_embedding(tokens)

        def encode(context):  # prefix + ctx + suffix, then CLIP's text transformer, EOT pooling and projection
            x = torch.cat([embedded[:, :1], context.expand(len(names), -1, -1), embedded[:, 17:]], dim=1)
            x = x + model.positional_embedding
            x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
            return F.normalize(x[torch.arange(len(names)), tokens.argmax(dim=-1)] @ model.text_projection, dim=-1)

        positive = encode(objective.context.vectors)
        text = torch.stack([positive, *(encode(n) for n in objective.negatives)], dim=1)  # [C, 1 + N, D]
        feats = F.normalize(model.encode_image(images), dim=-1)
        output = model.logit_scale.exp() * feats @ text.reshape(-1, text.shape[-1]).T
        release = _release_negprompt_loss(output, text.reshape(-1, text.shape[-1]), labels, 2, (1.0, 0.1, 0.05))
    assert ours.item() == pytest.approx(release.item(), rel=1e-5)

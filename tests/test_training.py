"""Training: the objectives, the one epoch loop, towers and the frozen check, checkpoints and the score contract,
logistic regression against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.data.loaders import Batch, make_loader
from utils.data.splits import load_dataset
from utils.errors import UserError
from utils.models.checkpoint import CONTRACT_KEY, read_checkpoint
from utils.models.loading import load_model
from utils.prompts import TEMPLATE_SETS
from utils.training.checkpoints import save_final
from utils.training.loop import grad_scaler, optimizer_steps, run_epoch, warmup_cosine
from utils.training.methods import METHODS
from utils.training.objectives import class_prompts, load_groups
from utils.training.towers import freeze, kept_frozen, tower_parameters

CLASSES = ["digit zero", "digit one", "digit two", "digit three", "digit four"]


SMALL = {"idlike": {"idlike_crops": 8, "idlike_selected": 2, "idlike_ood_prompts": 4}}  # the tests' sizes


def _objective(method: str, bundle):
    options = {"groups": load_groups(None, "digits", CLASSES)} if method == "group" else SMALL.get(method, {})
    return METHODS[method](bundle, CLASSES, TEMPLATE_SETS["single"], **options)


def _fixed_batch(method: str, size: int) -> tuple:
    """A fresh tiny model's objective, one batch of `size` ID images and one of size/2 outliers."""
    bundle = load_model("tiny", "none", seed=0)
    ids = load_dataset("digits", "train", limit=size)
    aux = load_dataset("digits_aux", "train", limit=size // 2)
    objective = _objective(method, bundle)
    transform = objective.train_transform() if method == "idlike" else bundle.preprocess  # ID-Like trains on crops
    batch = next(iter(make_loader(ids.dataset, transform, size, 0)))
    aux_images = next(iter(make_loader(aux.dataset, bundle.preprocess, size // 2, 0))).images
    return bundle, objective, batch, aux_images


@pytest.mark.parametrize("method", sorted(METHODS))
def test_objective_loss_is_finite_and_decreases(method):
    """A few steps on one fixed batch: the objective is differentiable and optimisable."""
    bundle, objective, batch, aux_images = _fixed_batch(method, 24)
    optimizer = torch.optim.AdamW(bundle.model.parameters(), lr=1e-3)
    losses = []
    for step in range(5):
        loss = objective(batch.images, batch.labels, aux_images, [0, 0, step, 0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_class_prompts_match_the_evaluation_default():
    assert class_prompts(["cat", "digit one"]) == ["a photo of a cat.", "a photo of a digit one."]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_contract_supplies_what_the_method_provides_and_round_trips(method, tiny, tmp_path):
    objective = _objective(method, tiny)
    if method == "negprompt":  # its contract exists once stage 2 began (training checks that it will)
        objective.start_negatives()
    contract = objective.contract(method)
    assert contract.inputs - {"logit_scale"} == set(METHODS[method].provides)
    assert contract.method == method and contract.classnames == tuple(CLASSES)
    assert contract.logit_scale == pytest.approx(tiny.model.logit_scale.exp().item())
    save_final(tmp_path / "final.pt", tiny.model.state_dict(), contract, note="plain values only")
    assert read_checkpoint(str(tmp_path / "final.pt")).contract == contract
    assert load_model("tiny", "none", ckpt=str(tmp_path / "final.pt")).fingerprint == tiny.fingerprint


def test_contract_of_plain_weights_and_damaged_ones(tiny, tmp_path):
    torch.save(tiny.model.state_dict(), tmp_path / "plain.pt")
    assert read_checkpoint(str(tmp_path / "plain.pt")).contract is None and read_checkpoint(None) is None
    torch.save({"state_dict": tiny.model.state_dict(), CONTRACT_KEY: {"method": "kplus1"}}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="damaged"):
        read_checkpoint(str(tmp_path / "bad.pt"))


class _Loader(list):
    """Batches of a toy regression, some of them unreadable (images None), with a len() like a DataLoader."""


def _batches(pattern: str) -> _Loader:
    """'x' a readable batch of 4 samples, '-' a batch whose images all failed to load."""
    rng = np.random.default_rng(0)
    out = _Loader()
    for kind in pattern:
        x = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
        images = x if kind == "x" else None
        out.append(Batch(images, torch.zeros(4, dtype=torch.long), torch.arange(4), []))
    return out


def _sgd_by_hand(model, batches, accumulate: int, lr: float) -> int:
    """The reference loop: readable batches add loss/accumulate; a step at each group's end; a last one for what is
    left when the epoch's final batches were unreadable. Returns the number of steps."""
    steps, pending = 0, False

    def sgd_step():
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
                p.grad = None

    for index, batch in enumerate(batches):
        if batch.images is None:
            continue
        (model(batch.images).pow(2).mean() / accumulate).backward()
        pending = True
        if (index + 1) % accumulate == 0 or index + 1 == len(batches):
            sgd_step()
            steps, pending = steps + 1, False
    if pending:
        sgd_step()
        steps += 1
    return steps


@pytest.mark.parametrize(
    ("pattern", "accumulate", "steps"),
    [("xxxxx", 1, 5), ("xxxxx", 2, 3), ("xx-x-", 2, 2), ("xxx--", 3, 1), ("x-", 2, 1), ("xxx", 50, 1)],
)
def test_run_epoch_accumulates_skips_and_flushes(pattern, accumulate, steps):
    """Same weights as a hand-written loop: accumulation groups, unreadable batches skipped, nothing left over."""
    torch.manual_seed(0)
    ours, reference = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    reference.load_state_dict(ours.state_dict())
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = _batches(pattern)
    stats = run_epoch(lambda batch, index: ours(batch.images).pow(2).mean(), batches, optimizer, scheduler,
                      grad_scaler(torch.device("cpu")), torch.device("cpu"), "test", accumulate)  # fmt: skip
    assert _sgd_by_hand(reference, batches, accumulate, 0.1) == steps
    assert scheduler.last_epoch == steps  # one schedule step per optimiser step
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(ours.parameters(), reference.parameters(), strict=True))
    assert all(p.grad is None for p in ours.parameters())  # no gradient crosses into the next epoch
    assert stats.samples == 4 * pattern.count("x")


def test_schedule_and_step_count():
    assert optimizer_steps(10, 3) == 4 and optimizer_steps(9, 3) == 3 and optimizer_steps(2, 50) == 1
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=10, warmup_steps=2)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0]) and rates[-1] < 0.05


def test_towers_partition_the_parameters(tiny):
    image, text = tower_parameters(tiny.model, "image"), tower_parameters(tiny.model, "text")
    assert len(image) + len(text) == len(list(tiny.model.parameters())) and image and text
    assert {id(p) for p in image} == {id(p) for p in tiny.model.visual.parameters()}
    trainable = freeze(tiny.model, "text")
    assert {id(p) for p in trainable} == {id(p) for p in image}
    assert all(not p.requires_grad for p in text)
    freeze(tiny.model, "none")
    assert all(p.requires_grad for p in tiny.model.parameters())
    with pytest.raises(ValueError, match="unknown tower"):
        tower_parameters(tiny.model, "audio")


@pytest.mark.parametrize("tower", ["text", "image", "all"])
def test_kept_frozen_notices_a_change(tower):
    bundle = load_model("tiny", "none", seed=0)
    with kept_frozen(bundle.model, tower):  # an untouched tower passes
        pass
    with pytest.raises(RuntimeError, match=f"frozen {tower} tower"), kept_frozen(bundle.model, tower), torch.no_grad():
        tower_parameters(bundle.model, tower)[0].add_(1e-3)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    from utils.atomic import atomic_path

    path = tmp_path / "last.pt"
    torch.save({"epoch": 1}, path)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half a checkpoint")
        raise RuntimeError("killed mid-write")
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_contract_of_a_checkpoint_from_before_the_contract(tiny, tmp_path):
    """final.pt files that kept the method's metadata as top-level keys still feed kplus1 and group."""
    groups = [{"name": "round", "classes": ["digit zero"]}, {"name": "other", "classes": CLASSES[1:]}]
    common = {"state_dict": tiny.model.state_dict(), "classnames": CLASSES, "logit_scale": 42.0}
    torch.save({**common, "method": "kplus1", "ood_prompt": "an odd one."}, tmp_path / "kplus1.pt")
    torch.save({**common, "method": "group", "groups": groups, "others_prompt": "not a {}."}, tmp_path / "group.pt")
    kplus1, group = (read_checkpoint(str(tmp_path / f"{m}.pt")).contract for m in ("kplus1", "group"))
    assert kplus1.texts == {"ood_prompt_features": ("an odd one.",)} and kplus1.logit_scale == 42.0
    assert group.texts == {"others_features": ("not a round.", "not a other.")}
    assert group.values == {"groups": [["digit zero"], CLASSES[1:]]} and group.method == "group"


def test_weight_decay_spares_gains_biases_and_the_logit_scale(tiny):
    from utils.training.loop import OPTIMIZERS, decay_groups

    params = list(tiny.model.parameters())
    assert len(decay_groups(params, 0.1, split=False)) == 1  # the layout of runs before the rule
    for name in OPTIMIZERS:
        decayed, spared = OPTIMIZERS[name](decay_groups(params, 0.1), 1e-3).param_groups
        assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
        assert any(p is tiny.model.logit_scale for p in spared["params"])
        assert all(p.ndim >= 2 for p in decayed["params"]) and len(decayed["params"]) + len(spared["params"]) == len(
            params
        )


def _restated_loss(method: str, bundle, objective, images, labels, aux) -> torch.Tensor:
    """Each objective's loss written out from its paper's formula with open_clip's own encoders (no toolkit code)."""
    import torch.nn.functional as F

    model = bundle.model

    def text(prompts):
        return F.normalize(model.encode_text(bundle.tokenizer(prompts)).float(), dim=-1)

    def image(x):
        return F.normalize(model.encode_image(x).float(), dim=-1)

    scale = model.logit_scale.exp()
    prompts = [f"a photo of a {c}." for c in CLASSES]
    if method == "contrastive":  # one template: every caption is its class prompt; same-class pairs are positives
        logits = scale * image(images) @ text([prompts[y] for y in labels]).T
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        return 0.5 * (
            -(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.T.log_softmax(1)).sum(1).mean()
        )
    if method == "kplus1":  # outliers are class K
        logits = scale * image(torch.cat([images, aux])) @ text([*prompts, objective.ood_prompt]).T
        return F.cross_entropy(logits, torch.cat([labels, torch.full((len(aux),), len(CLASSES))]))
    if method == "oe":  # ID cross-entropy plus w times the cross-entropy of the outliers to the uniform distribution
        head = text(prompts)
        id_loss = F.cross_entropy(scale * image(images) @ head.T, labels)
        to_uniform = -(scale * image(aux) @ head.T).log_softmax(1).mean(1).mean()
        return id_loss + objective.oe_weight * to_uniform
    if method == "group":  # each group: its classes + "others"; an image outside the group (or an outlier) is others
        feats = image(torch.cat([images, aux]))
        every = torch.cat([labels, torch.full((len(aux),), -1)])
        total = 0.0
        for group in objective.groups:
            members = [CLASSES.index(c) for c in group["classes"]]
            head = text([*(prompts[m] for m in members), objective.others_prompt.format(group["name"])])
            target = torch.tensor([members.index(int(y)) if int(y) in members else len(members) for y in every])
            total = total + F.cross_entropy(scale * feats @ head.T, target)
        return total / len(objective.groups)
    if method == "idlike":  # each image's k crops nearest its class prompt are ID, the k farthest outliers
        k, ood = objective.selected, objective.ood_text()
        head = torch.cat([objective.class_text(), ood])
        loss_in = loss_out = 0.0
        for crops, y in zip(images, labels, strict=True):
            feats = image(crops)
            order = (feats @ text([prompts[y]])[0]).argsort(descending=True)
            loss_in = loss_in + F.cross_entropy(scale * feats[order[:k]] @ head.T, y.repeat(k), reduction="sum")
            mass = (scale * feats[order[-k:]] @ head.T).softmax(1)[:, : len(CLASSES)].sum(1)
            loss_out = loss_out + torch.log(mass + 1e-16).sum()
        pairs = [F.cosine_embedding_loss(ood[p][None], ood[q][None], torch.tensor([-1]))
                 for p in range(len(ood)) for q in range(p + 1, len(ood))]  # fmt: skip
        count = k * len(labels)
        return loss_in / count + 0.3 * loss_out / count + 0.2 * torch.stack(pairs).mean()
    if method in ("coop", "locoop", "negprompt"):  # the learned prompts' CE (negprompt: its stage 1)
        loss = F.cross_entropy(scale * image(images) @ objective.class_text().T, labels)
        if method == "locoop":
            from utils.models.local_tokens import entropy_outside_top_k, global_and_patches

            _, patches = global_and_patches(model.visual, images)
            local = scale * F.normalize(patches.float(), dim=-1) @ objective.class_text().T
            loss = loss - objective.locoop_lambda * entropy_outside_top_k(local, labels, objective.top_k)
        return loss
    raise AssertionError(f"no restatement of {method}: add one")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_objective_is_its_formula_on_a_fixed_batch(method):
    """A known answer per objective (a flipped sign, a dropped term or a wrong target fails here, where a loss that
    merely decreases would not)."""
    bundle, objective, batch, aux_images = _fixed_batch(method, 16)
    with torch.no_grad():
        got = objective(batch.images, batch.labels, aux_images, [0, 0, 1, 0])
        expected = _restated_loss(method, bundle, objective, batch.images, batch.labels, aux_images)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)

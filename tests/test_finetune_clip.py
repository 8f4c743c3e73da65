"""finetune_clip.py: the four objectives, checkpoints, exact resume, the leakage guard, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_ood_detection
import finetune_clip
import utils.training.clip_finetune
from tests.conftest import write_images
from utils.models.checkpoint import CONTRACT_KEY, read_checkpoint
from utils.models.loading import load_model
from utils.training.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--in", "digits", "--model", "tiny", "--pretrained", "none", "--workers", "0", "--limit", "64",
         "--batch-size", "32", "--lr", "3e-4", "--weight-decay", "0"]  # fmt: skip
CLASSES = ["digit zero", "digit one", "digit two", "digit three", "digit four"]


def _train(tmp_path, method, *extra, out="run"):
    return finetune_clip.main([*QUICK, "--method", method, "--out-dir", str(tmp_path / out),
                               "--cache-dir", str(tmp_path / "cache"), *extra])  # fmt: skip


SHORT = {
    "negprompt": ["--epochs", "2", "--positive-epochs", "1"],  # both stages
    "idlike": ["--epochs", "1", "--idlike-crops", "8", "--idlike-selected", "2", "--idlike-ood-prompts", "4"],
}
OWN_SCORE = {"kplus1": "kplus1", "group": "group", "negprompt": "negprompt", "idlike": "idlike"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_saves_and_scores(tmp_path, method):
    summary = _train(tmp_path, method, *SHORT.get(method, ["--epochs", "1"]))
    run = tmp_path / "run"
    assert (run / "last.pt").is_file() and (run / "metrics.jsonl").is_file()
    contract = read_checkpoint(str(run / "final.pt")).contract
    assert contract.method == method and list(contract.classnames) == CLASSES
    assert 0 <= summary["zero_shot_top1"] <= 1
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss"] == record["loss"]  # finite, not NaN
    assert load_model("tiny", "none", ckpt=str(run / "final.pt")).fingerprint  # --ckpt reads it
    score = OWN_SCORE.get(method, "mcm")
    argv = ["--in", "digits", "--model", "tiny", "--pretrained", "none", "--workers", "0", "--ckpt",
            str(run / "final.pt"), "--score", score, "--limit", "40", "--no-plots", "--out-dir", str(tmp_path / "eval"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    result = eval_ood_detection.main(argv)
    assert 0 <= result["metrics"][score]["digits_ood"]["AUROC"] <= 1
    assert contract.outliers == (("digits_aux",) if METHODS[method].needs_aux else ())
    if method == "oe":  # its outlier pool is no test set for it, unless the user says so (and it is recorded)
        with pytest.raises(SystemExit):
            eval_ood_detection.main([*argv, "--out", "digits_aux", "--overwrite"])
        eval_ood_detection.main([*argv, "--out", "digits_aux", "--overwrite", "--allow-overlap"])
        saved = json.loads((tmp_path / "eval" / "results.json").read_text())
        assert saved["trained_on_as_outliers"] == ["digits_aux"]
        assert any(note.startswith("--allow-overlap: digits_aux is the outlier pool") for note in saved["notes"])


def test_an_earlier_run_folder_is_never_replaced_silently(tmp_path, capsys):
    """As the other scripts: a folder holding a run gets a numbered sibling; --overwrite replaces its files."""
    _train(tmp_path, "contrastive", "--epochs", "1")
    first = (tmp_path / "run" / "final.pt").read_bytes()
    summary = _train(tmp_path, "contrastive", "--epochs", "1", "--seed", "3")
    assert summary["out_dir"] == str(tmp_path / "run-1") and (tmp_path / "run" / "final.pt").read_bytes() == first
    assert "already holds results; writing to" in capsys.readouterr().err
    _train(tmp_path, "contrastive", "--epochs", "1", "--seed", "3", "--overwrite")
    assert (tmp_path / "run" / "final.pt").read_bytes() != first


def test_checkpoint_scores_need_their_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        eval_ood_detection.main(["--in", "digits", "--model", "tiny", "--pretrained", "none", "--score", "kplus1",
                                 "--out-dir", str(tmp_path / "e"), "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert "finetune_clip.py --method kplus1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "extra", "epochs", "crash"),
    [
        ("kplus1", [], 2, 1),
        ("kplus1", ["--accumulate", "2", "--workers", "2", "--batch-size", "24"], 2, 1),
        ("locoop", [], 2, 1),
        ("negprompt", ["--positive-epochs", "1"], 2, 1),  # killed between its stages: stage 2 starts after the resume
        ("negprompt", ["--positive-epochs", "1", "--batch-size", "16"], 3, 2),  # killed in stage 2: its negatives
        ("idlike", ["--idlike-crops", "8", "--idlike-selected", "2", "--idlike-ood-prompts", "4"], 2, 1),  # stay
    ],
)
def test_resume_reaches_the_same_weights(tmp_path, monkeypatch, method, extra, epochs, crash):
    extra = ["--epochs", str(epochs), *extra]
    _train(tmp_path, method, *extra, out="straight")
    original = utils.training.clip_finetune._write_log

    def crash_after(path, records):
        original(path, records)
        if len(records) == crash:
            raise KeyboardInterrupt  # killed between epochs: last.pt holds epoch `crash`

    monkeypatch.setattr(utils.training.clip_finetune, "_write_log", crash_after)
    with pytest.raises(SystemExit):
        _train(tmp_path, method, *extra, out="interrupted")
    assert torch.load(tmp_path / "interrupted" / "last.pt", weights_only=True)["epoch"] == crash
    monkeypatch.setattr(utils.training.clip_finetune, "_write_log", original)
    _train(tmp_path, method, "--resume", *extra, out="interrupted")
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "interrupted" / "final.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a[CONTRACT_KEY] == b[CONTRACT_KEY]  # a learned prompt context too (locoop), learned negatives (negprompt)


def test_accumulation_longer_than_an_epoch_still_trains(tmp_path):
    _train(tmp_path, "oe", "--epochs", "1", "--accumulate", "50", "--batch-size", "16")
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["state_dict"]
    assert not torch.equal(final["visual.proj"], load_model("tiny", "none", seed=0).model.visual.proj)


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    _train(tmp_path, "oe", "--epochs", "1")
    with pytest.raises(SystemExit):
        _train(tmp_path, "oe", "--epochs", "1", "--resume", "--seed", "3")
    assert "other settings (seed)" in capsys.readouterr().err


def test_leakage_guard(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _train(tmp_path, "kplus1", "--aux", "digits")
    assert "overlaps the ID set digits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train(tmp_path, "oe", "--aux", "digits_ood")
    assert "also an OOD test set" in capsys.readouterr().err
    write_images(tmp_path / "pool" / "digit seven", 3, seed=0)
    write_images(tmp_path / "pool" / "letters", 3, seed=2)
    with pytest.raises(SystemExit):
        _train(tmp_path, "oe", "--aux", f"folder:{tmp_path / 'pool'}")
    assert "shares classes with the OOD test set digits_ood: digit seven" in capsys.readouterr().err
    write_images(tmp_path / "ood", 3, seed=1)
    with pytest.raises(SystemExit):
        _train(tmp_path, "oe", "--aux", f"folder:{tmp_path / 'ood'}", "--eval-out", f"folder:{tmp_path / 'ood'}")
    assert "also an OOD test set" in capsys.readouterr().err


def test_bad_inputs(tmp_path, capsys):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"groups": [{"name": "round", "classes": ["digit zero"]}]}))
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"groups": [{"name": "all", "classes": [CLASSES]}]}))
    cases = [
        (["--method", "group", "--groups", str(groups)], "every class of digits exactly once"),
        (["--method", "oe", "--in", "cifar10", "--data-root", str(tmp_path / "d"), "--no-download"], "cifar-10"),
        (["--method", "contrastive", "--model", "timm:test_vit"], "no text"),
        (["--method", "contrastive", "--resume"], "--resume needs --out-dir"),
        (["--method", "oe", "--weight-decay", "-1"], "argument --weight-decay"),
        (["--method", "oe", "--oe-weight", "nan"], "argument --oe-weight"),
        (["--method", "group", "--others-prompt", "not a {x}"], "--others-prompt needs exactly one"),
        (["--method", "group", "--groups", str(nested)], "non-empty string name and a list of class-name strings"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as info:
            finetune_clip.main([*QUICK, "--cache-dir", str(tmp_path / "c"), *argv])
        assert info.value.code == 2
        assert expected in capsys.readouterr().err


@pytest.mark.parametrize(("method", "extra"), [("contrastive", ["--epochs", "1"]),
                                              ("negprompt", ["--epochs", "2", "--positive-epochs", "1"]),
                                              ("idlike", SHORT["idlike"])])  # fmt: skip
def test_torchrun_two_processes(tmp_path, method, extra):
    """negprompt: a parameter without a gradient in each stage, which DDP must be told about."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--standalone",
        "finetune_clip.py",
        *QUICK,
        "--method",
        method,
        *extra,
        "--out-dir",
        str(tmp_path / "ddp"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]  # fmt: skip  (two ranks: CPU even beside a GPU)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = torch.load(tmp_path / "ddp" / "final.pt", weights_only=True)
    assert read_checkpoint(str(tmp_path / "ddp" / "final.pt")).contract.method == method
    assert final["config"]["batch_size"] == 32
    assert load_model("tiny", "none", ckpt=str(tmp_path / "ddp" / "final.pt"))


@pytest.mark.parametrize("tower", ["text", "image"])
def test_frozen_tower_is_unchanged_and_the_other_trains(tmp_path, tower):
    _train(tmp_path, "contrastive", "--epochs", "1", "--freeze", tower, "--templates", "single")
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["state_dict"]
    base = load_model("tiny", "none", seed=0).model.state_dict()
    in_image = {k: k.startswith("visual.") for k in base}
    frozen = [k for k in base if in_image[k] == (tower == "image")]
    trained = [k for k in base if in_image[k] != (tower == "image")]
    assert all(torch.equal(final[k], base[k]) for k in frozen)
    assert any(not torch.equal(final[k], base[k]) for k in trained)


def test_a_run_from_before_the_decay_groups_resumes_as_it_was_trained(tmp_path, monkeypatch):
    """last.pt of a run whose optimiser decayed every parameter in one group resumes with one group, exactly."""
    import utils.training.clip_finetune as clip_finetune

    one_group = lambda params, decay, split=True: [{"params": list(params), "weight_decay": decay}]  # noqa: E731
    monkeypatch.setattr(clip_finetune, "decay_groups", one_group)
    _train(tmp_path, "oe", "--epochs", "2", "--weight-decay", "0.1", out="straight")
    original = clip_finetune._write_log

    def crash_after_first_epoch(path, records):
        original(path, records)
        if len(records) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(clip_finetune, "_write_log", crash_after_first_epoch)
    with pytest.raises(SystemExit):
        _train(tmp_path, "oe", "--epochs", "2", "--weight-decay", "0.1", out="old")
    monkeypatch.undo()  # today's code resumes it
    _train(tmp_path, "oe", "--epochs", "2", "--weight-decay", "0.1", "--resume", out="old")
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "old" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(torch.load(tmp_path / "old" / "last.pt", weights_only=True)["optimizer"]["param_groups"]) == 1

"""eval_ood_detection.py end to end on the tiny model and the offline datasets."""

from __future__ import annotations

import dataclasses
import json

import pytest

import eval_ood_detection
import utils.features
from tests.conftest import write_images
from utils.data import DATASETS

TINY = ["--model", "tiny", "--pretrained", "none", "--workers", "0", "--batch-size", "64"]


def run(tmp_path, *extra, out="out"):
    argv = [*TINY, "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / out), *extra]
    return eval_ood_detection.main(argv)


def test_first_working_path_digits_mcm(tmp_path, capsys):
    summary = run(tmp_path, "--in", "digits", "--score", "MCM")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    metrics = saved["results"]["mcm"]["digits_ood"]
    assert set(metrics) == {"AUROC", "FPR95"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert saved["results"] == summary["results"]
    assert saved["id_samples"] == 271 and saved["ood_samples"] == {"digits_ood": 160}
    assert 0.0 <= saved["id_accuracy"] <= 1.0
    assert saved["config"]["id_name"] == "digits" and "torch" in saved["packages"] and "git_commit" in saved
    printed = capsys.readouterr().out
    assert "| mcm | digits_ood |" in printed and f"{100 * metrics['AUROC']:.2f}" in printed


def test_rerun_with_other_score_does_no_forward_pass(tmp_path, monkeypatch):
    run(tmp_path, "--in", "digits", "--score", "mcm", out="a")
    calls = []
    original = utils.features.extract
    monkeypatch.setattr(utils.features, "extract", lambda *a, **k: calls.append(a) or original(*a, **k))
    second = run(tmp_path, "--in", "digits", "--score", "maxlogit", "--templates", "ensemble", out="b")
    assert calls == [] and set(second["results"]) == {"mis"}


def test_trained_checkpoint_and_folder_ood(tmp_path):
    import torch

    from utils.models import load_clip

    ckpt = tmp_path / "final.pt"
    torch.save({"state_dict": load_clip("tiny", "none", seed=7).model.state_dict()}, ckpt)
    write_images(tmp_path / "noise", 12, seed=3)
    summary = run(
        tmp_path,
        "--in",
        "digits",
        "--out",
        f"folder:{tmp_path / 'noise'}",
        "digits_ood",
        "--ckpt",
        str(ckpt),
        "--score",
        "mcm",
        "mis",
    )
    assert set(summary["results"]["mcm"]) == {f"folder:{tmp_path / 'noise'}", "digits_ood"}
    assert summary["ood_samples"][f"folder:{tmp_path / 'noise'}"] == 12


def test_limit(tmp_path):
    summary = run(tmp_path, "--in", "digits", "--limit", "30")
    assert summary["id_samples"] == 30 and summary["ood_samples"] == {"digits_ood": 30}


def test_missing_default_ood_set_is_skipped(tmp_path, monkeypatch, capsys):
    spec = dataclasses.replace(DATASETS["digits"], ood=("isun", "digits_ood"))
    monkeypatch.setitem(DATASETS, "digits", spec)
    summary = run(tmp_path, "--in", "digits", "--data-root", str(tmp_path / "data"))
    assert list(summary["results"]["mcm"]) == ["digits_ood"]
    err = capsys.readouterr().err
    assert "skipping default OOD set isun" in err and "iSUN.tar.gz" in err


def _fails(tmp_path, capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        run(tmp_path, *argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # failed before any feature was extracted
    return err


def test_named_missing_ood_set_is_an_error_before_work(tmp_path, capsys):
    err = _fails(tmp_path, capsys, "--in", "digits", "--out", "isun", "--data-root", str(tmp_path / "d"))
    assert "iSUN.tar.gz" in err and "expected under --data-root" in err


def test_cifar10_offline_says_where_to_get_it(tmp_path, capsys):
    err = _fails(tmp_path, capsys, "--in", "cifar10", "--data-root", str(tmp_path / "d"), "--no-download")
    assert "cifar-10-python.tar.gz" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--in", "digits", "--score", "bogus"], "unknown score 'bogus'"),
        (["--in", "nowhere"], "unknown dataset 'nowhere'"),
        (["--in", "digits", "--out", "nowhere"], "unknown dataset 'nowhere'"),
        (["--in", "digits", "--temperature", "0"], "--temperature must be positive"),
        (["--in", "digits", "--templates", "missing.txt"], "neither a known set"),
        (["--in", "digits", "--model", "ViT-Nope"], "--list-models"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, capsys, argv, expected):
    assert expected in _fails(tmp_path, capsys, *argv)


def test_existing_results_are_not_overwritten(tmp_path):
    run(tmp_path, "--in", "digits", "--limit", "20")
    first = (tmp_path / "out" / "results.json").read_text()
    run(tmp_path, "--in", "digits", "--limit", "25")
    assert (tmp_path / "out" / "results.json").read_text() == first
    assert json.loads((tmp_path / "out-1" / "results.json").read_text())["id_samples"] == 25


def test_list_models(capsys):
    with pytest.raises(SystemExit) as info:
        eval_ood_detection.main(["--list-models"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "tiny:" in out and "ViT-B-16: openai" in out

"""The leaf modules: device selection, atomic writes, prompt templates; and the rules of the package layout."""

from __future__ import annotations

import json

import pytest
import torch

from utils.atomic import atomic_dir, write_json
from utils.device import autocast, resolve_device
from utils.errors import UserError
from utils.prompts import TEMPLATE_SETS, load_templates, render


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_missing_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cpu_runs_in_full_precision():
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_publishes_only_on_success(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "part").write_text("x")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "part").write_text("x")
    assert (tmp_path / "entry" / "part").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_template_sets():
    assert TEMPLATE_SETS["single"] == ("a photo of a {}.",)
    assert len(TEMPLATE_SETS["ensemble"]) == 80
    assert render(TEMPLATE_SETS["ensemble"], "cat")[0] == "a bad photo of a cat."


def test_template_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a drawing of a {}.\n\nitap of a {}.\n")
    assert load_templates(str(path)) == ("a drawing of a {}.", "itap of a {}.")
    path.write_text("no placeholder here\n")
    with pytest.raises(UserError, match="exactly one"):
        load_templates(str(path))
    with pytest.raises(UserError, match="neither a known set"):
        load_templates(str(tmp_path / "missing.txt"))

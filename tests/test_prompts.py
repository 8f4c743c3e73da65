"""Prompts and the text head."""

from __future__ import annotations

import open_clip
import pytest
import torch

from utils.errors import UserError
from utils.prompts import TEMPLATE_SETS, load_templates, render, text_head


def test_template_sets():
    assert TEMPLATE_SETS["single"] == ("a photo of a {}.",)
    assert len(TEMPLATE_SETS["ensemble"]) == 80
    assert render(TEMPLATE_SETS["ensemble"], "cat")[0] == "a bad photo of a cat."


@pytest.mark.parametrize("templates", ["single", "ensemble"])
def test_text_head_equals_open_clip_zero_shot_classifier(tiny, templates):
    names = ["cat", "dog", "airplane", "a very long class name with many words"]
    chosen = load_templates(templates)
    ours = text_head(tiny.model, tiny.tokenizer, names, chosen)
    reference = open_clip.build_zero_shot_classifier(tiny.model, tiny.tokenizer, names, chosen, device="cpu")
    assert ours.shape == (len(names), tiny.embed_dim)
    assert torch.allclose(ours, reference.T, atol=1e-6)
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(names)), atol=1e-5)


def test_template_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a drawing of a {}.\n\nitap of a {}.\n")
    assert load_templates(str(path)) == ("a drawing of a {}.", "itap of a {}.")
    path.write_text("no placeholder here\n")
    with pytest.raises(UserError, match="exactly one"):
        load_templates(str(path))
    with pytest.raises(UserError, match="neither a known set"):
        load_templates(str(tmp_path / "missing.txt"))


def test_empty_class_list(tiny):
    with pytest.raises(UserError, match="empty"):
        text_head(tiny.model, tiny.tokenizer, [], ["{}"])

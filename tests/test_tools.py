"""The tools: the offline digits experiment (`make demo`) reaches its thresholds; README's layout is the tree's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_reaches_its_thresholds(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(["make", "demo", f"OUT={out}", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zero_shot_top1"] >= 0.90
    assert summary["ood"]["mcm"]["digits_ood"]["AUROC"] >= 0.85
    assert set(summary["ood"]["mcm"]) == {"digits_ood", "faces", "skimage_textures"}
    assert len(summary["training"]) == 30 and summary["linear_probe_top1"] >= 0.90


def test_readme_layout_is_generated_from_the_tree():
    from tools.layout import layout, readme_section

    current = readme_section((ROOT / "README.md").read_text(encoding="utf-8"))
    assert current == layout(), "README's code layout is stale: run python -m tools.layout --write"


def test_layout_lists_every_module():
    from tools.layout import layout

    text = layout()
    for path in [*ROOT.glob("*.py"), *(ROOT / "utils").rglob("*.py"), *(ROOT / "tools").glob("*.py")]:
        if path.name != "__init__.py":
            assert f" {path.name} " in f" {text} ".replace("\n", " "), path

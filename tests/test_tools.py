"""The offline digits experiment (`make demo`): a tiny CLIP trained from scratch must classify and detect OOD."""

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

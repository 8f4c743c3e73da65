"""notebooks/play_with_clip.ipynb: stored without outputs, and runs top to bottom on the digits experiment."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "play_with_clip.ipynb"


def test_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_runs_top_to_bottom_with_figures(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    replacements = {
        '"./cache/features"': repr(str(tmp_path / "cache")),
        '"results/notebook"': repr(str(tmp_path / "out")),
        "TRAIN_EPOCHS = 15": "TRAIN_EPOCHS = 2",  # the figures, not the model's quality, are tested here
    }
    for old, new in replacements.items():
        assert old in parameters.source, f"the parameter cell no longer holds {old}"
        parameters.source = parameters.source.replace(old, new)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    figures = sum(
        1 for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    )
    assert figures >= 13  # heatmap, 4 scores x (histogram + ROC), PCA, t-SNE, overconfidence, disagreement
    assert (tmp_path / "out" / "train" / "final.pt").is_file()
    assert len((tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines()) == 2  # TRAIN_EPOCHS is used

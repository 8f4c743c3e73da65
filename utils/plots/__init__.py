"""Figures on matplotlib's Figure (no pyplot state, works headless), one module per audience; PNGs atomically.

ood: score histograms and ROC curves (every results folder, the notebook); classification: play_with_clip.py's
figures; embeddings: the notebook's analysis figures.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from utils.atomic import atomic_path


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)

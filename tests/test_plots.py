"""The figures: each is built headless from known inputs, shows what it is given, and is saved atomically as PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.plots import save_figure
from utils.plots.classification import confusion_matrix_figure, similarity_heatmap, top_labels_figure
from utils.plots.embeddings import modality_projection, overconfidence_figure, thumbnails_figure
from utils.plots.ood import roc_curves, score_histograms

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    return {"near": (rng.normal(1, 1, 50), rng.normal(0, 1, 40)), "far": (rng.normal(1, 1, 50), rng.normal(-3, 1, 30))}


def test_histograms_have_a_panel_per_set_with_both_distributions(pairs):
    fig = score_histograms(pairs, "t")
    axes = fig.get_axes()
    assert len(axes) == 2
    for ax, (name, (id_scores, ood_scores)) in zip(axes, pairs.items(), strict=True):
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert labels == [f"ID ({len(id_scores)})", f"{name} ({len(ood_scores)})"]


def test_roc_curves_run_from_the_origin_to_the_corner(pairs):
    ax = roc_curves(pairs, "t").get_axes()[0]
    curves = [line for line in ax.get_lines() if line.get_label() in pairs]
    assert [c.get_label() for c in curves] == list(pairs)
    for curve in curves:
        x, y = curve.get_data()
        assert (x[0], y[0]) == (0, 0) and (x[-1], y[-1]) == (1, 1) and np.all(np.diff(x) >= 0)


def test_save_figure_writes_a_png_and_nothing_else(pairs, tmp_path):
    save_figure(roc_curves(pairs, "t"), tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]


def test_classification_figures(tmp_path):
    confusion = np.array([[3, 1], [0, 4]])
    fig = confusion_matrix_figure(confusion, ["cat", "dog"], "t")
    shown = fig.get_axes()[0].get_images()[0].get_array()
    assert np.allclose(shown, [[0.75, 0.25], [0, 1]])  # rows normalised
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    heat = similarity_heatmap(np.array([[0.3, 0.1], [0.2, 0.4]]), images, ["a", "b"], "t")
    assert len(heat.get_axes()) == 3  # the map and one thumbnail per image
    top = top_labels_figure(images, ["x", "y"], [[("cat", 0.9), ("dog", 0.1)]] * 2, "t")
    assert len(top.get_axes()) == 4
    save_figure(top, tmp_path / "top.png")
    assert (tmp_path / "top.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_figures(method):
    rng = np.random.default_rng(1)
    images, text = rng.normal(size=(30, 8)), rng.normal(size=(3, 8))
    fig = modality_projection(images, rng.integers(0, 3, 30), text, ["a", "b", "c"], method=method)
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"] and method.upper() in ax.get_title()
    over = overconfidence_figure(np.full(5, 0.9), np.full(5, 0.6), "t")
    assert "mean 0.90" in over.get_axes()[0].get_legend().get_texts()[0].get_text()
    tiles = thumbnails_figure({"row": [Image.new("RGB", (4, 4))] * 2}, {"row": ["ID", "OOD"]}, "t")
    assert [ax.get_title() for ax in tiles.get_axes()] == ["ID", "OOD"]

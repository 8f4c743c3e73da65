"""Classification figures of play_with_clip.py: confusion matrices, image x text similarities, top labels."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def confusion_matrix_figure(confusion: np.ndarray, classnames: list[str], title: str) -> Figure:
    """Row-normalised confusion matrix (rows = true class), with counts written in small sets."""
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(20, 2 + 0.35 * len(classnames))
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    if len(classnames) <= 30:
        ax.set_xticks(range(len(classnames)), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classnames)), classnames, fontsize=7)
    if len(classnames) <= 15:
        for (row, col), count in np.ndenumerate(confusion):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7,
                    color="white" if rates[row, col] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def similarity_heatmap(similarity: np.ndarray, images: list, descriptions: list[str], title: str) -> Figure:
    """Cosine similarity of descriptions (rows) x images (columns), with the images as thumbnails underneath."""
    n_text, n_images = similarity.shape[1], similarity.shape[0]
    fig = Figure(figsize=(2 + 1.3 * n_images, 2 + 0.5 * n_text + 1.5), layout="constrained")
    grid = fig.add_gridspec(2, n_images, height_ratios=[0.5 * n_text, 1.3])
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(similarity.T, cmap="viridis", aspect="auto")
    for (col, row), value in np.ndenumerate(similarity):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(n_text), descriptions, fontsize=8)
    ax.set_xticks([])
    ax.set_title(title)
    for k, image in enumerate(images):
        thumb = fig.add_subplot(grid[1, k])
        thumb.imshow(image)
        thumb.axis("off")
    return fig


def top_labels_figure(images: list, names: list[str], top: list[list[tuple[str, float]]], title: str) -> Figure:
    """Each image beside a bar chart of its top zero-shot labels and their probabilities."""
    fig = Figure(figsize=(8, 1.8 * len(images)), layout="constrained")
    axes = fig.subplots(len(images), 2, squeeze=False, width_ratios=[1, 2])
    for row, (image, name, ranked) in enumerate(zip(images, names, top, strict=True)):
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(name, fontsize=8)
        axes[row, 0].axis("off")
        labels, probabilities = zip(*ranked, strict=True)
        axes[row, 1].barh(range(len(labels))[::-1], probabilities)
        axes[row, 1].set_yticks(range(len(labels))[::-1], labels, fontsize=8)
        axes[row, 1].set_xlim(0, 1)
    fig.suptitle(title)
    return fig

"""Figures for results folders and the notebook; built on matplotlib's Figure (no pyplot state, works headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from utils.atomic import atomic_path

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # OOD set name -> (ID scores, OOD scores)


def score_histograms(pairs: Pairs, title: str) -> Figure:
    """One panel per OOD set: the ID score distribution against that set's, on shared bins."""
    fig = Figure(figsize=(4 * max(1, len(pairs)), 3.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(pairs)), squeeze=False)[0]
    for ax, (name, (id_scores, ood_scores)) in zip(axes, pairs.items(), strict=False):
        both = np.concatenate([id_scores, ood_scores])
        bins = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, 50)
        ax.hist(id_scores, bins=bins, alpha=0.6, density=True, label=f"ID ({len(id_scores)})")
        ax.hist(ood_scores, bins=bins, alpha=0.6, density=True, label=f"{name} ({len(ood_scores)})")
        ax.set_xlabel("score (higher = more ID)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.suptitle(title)
    return fig


def roc_curves(pairs: Pairs, title: str) -> Figure:
    """ROC curves with ID as the positive class, one per OOD set, with the 95% TPR line of FPR95."""
    fig = Figure(figsize=(4.2, 4), layout="constrained")
    ax = fig.subplots()
    for name, (id_scores, ood_scores) in pairs.items():
        labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
        fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, ood_scores])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("OOD accepted (FPR)")
    ax.set_ylabel("ID accepted (TPR)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


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


def modality_projection(image_features: np.ndarray, image_labels: np.ndarray, text_features: np.ndarray,
                        classnames: list[str], method: str = "pca", seed: int = 0) -> Figure:  # fmt: skip
    """Image and text embeddings projected together to 2-D (PCA or t-SNE): the modality gap shows as two clouds."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    both = np.concatenate([image_features, text_features]).astype(np.float64)
    if method == "pca":
        points = PCA(n_components=2, random_state=seed).fit_transform(both)
    else:
        points = TSNE(n_components=2, random_state=seed, perplexity=min(30, len(both) - 1), init="pca").fit_transform(
            both
        )
    images, texts = points[: len(image_features)], points[len(image_features) :]
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    scatter = ax.scatter(images[:, 0], images[:, 1], c=image_labels, cmap="tab10", s=8, alpha=0.6, label="images")
    ax.scatter(texts[:, 0], texts[:, 1], c=np.arange(len(texts)), cmap="tab10", marker="*", s=250,
               edgecolors="black", label="class prompts")  # fmt: skip
    for (x, y), name in zip(texts, classnames, strict=True):
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{method.upper()} of image and text embeddings")
    fig.colorbar(scatter, ax=ax, label="image class")
    return fig


def overconfidence_figure(with_true: np.ndarray, without_true: np.ndarray, title: str) -> Figure:
    """Histograms of max softmax confidence with the true class among the labels and with it removed."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    ax.hist(with_true, bins=bins, alpha=0.6, label=f"true label present (mean {with_true.mean():.2f})")
    ax.hist(without_true, bins=bins, alpha=0.6, label=f"true label removed (mean {without_true.mean():.2f})")
    ax.set_xlabel("max softmax confidence")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def thumbnails_figure(rows: dict[str, list], captions: dict[str, list[str]], title: str) -> Figure:
    """Rows of small images, one row per named group, each image with a caption."""
    width = max(len(images) for images in rows.values())
    fig = Figure(figsize=(1.3 * width, 1.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), width, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(width):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
                ax.set_title(captions[name][c], fontsize=6)
        axes[r, 0].text(-0.3, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    return fig

"""The notebook's analysis figures: the modality gap, overconfidence without the true label, image thumbnails."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


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

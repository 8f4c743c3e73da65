"""OOD score figures: per-set score histograms and ROC curves (every results folder, and the notebook)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

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

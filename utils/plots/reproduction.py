"""The reproduction figure (python -m tools.reproduce): our numbers against the published ones."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

Point = tuple[str, float, float, bool, str]  # (metric, published, ours, comparable, preset)


def ours_against_published(points: Sequence[Point]) -> Figure:
    """One panel per kind of metric (AUROC-like, FPR-like), ours against published with the y = x line; points of
    comparable runs filled, of runs with another model or data hollow."""
    kinds = {"AUROC / AUPR (higher is better)": [p for p in points if not p[0].startswith("FPR")],
             "FPR at 95% TPR (lower is better)": [p for p in points if p[0].startswith("FPR")]}  # fmt: skip
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    for ax, (title, shown) in zip(fig.subplots(1, 2), kinds.items(), strict=True):
        ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls=":")
        for filled in (True, False):
            chosen = [p for p in shown if p[3] is filled]
            if chosen:
                ax.scatter([p[1] for p in chosen], [p[2] for p in chosen], s=22, label="comparable" if filled else
                           "not comparable (other model or data)", facecolors=None if filled else "none",
                           edgecolors="C0")  # fmt: skip
        if not shown:
            ax.text(50, 50, "no preset ran\nwith published numbers", ha="center", va="center", color="grey")
        ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="published", ylabel="ours", title=title)
        if shown:
            ax.legend(fontsize=8, loc="upper left")
    return fig

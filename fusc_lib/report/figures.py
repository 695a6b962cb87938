"""The report's charts as inline SVG (matplotlib, Agg): cluster sizes, loss curves, the
confusion matrix and the K sweep. Text stays text (`svg.fonttype: none`), so the page stays
small and searchable."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402

from schemas.metrics import Confusion, Sweep  # noqa: E402

STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
         "axes.spines.right": False}


def _svg(figure: plt.Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # no XML prologue inside HTML


def cluster_sizes(sizes: Sequence[int], colours: Sequence[str]) -> str:
    """Bar chart of scans per cluster id, each bar in its cluster's colour."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(max(4, 0.35 * len(sizes)), 2.4))
        axes.bar(range(len(sizes)), sizes, color=colours)
        axes.set_xticks(range(len(sizes)))
        axes.set_xlabel("cluster")
        axes.set_ylabel("scans")
        return _svg(figure)


def loss_curves(curves: dict[str, Sequence[float]]) -> str | None:
    """One panel per training stage: its loss against the epoch; None without any curve."""
    curves = {name: values for name, values in curves.items() if len(values)}
    if not curves:
        return None
    with plt.rc_context(STYLE):
        figure, panels = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.4),
                                      squeeze=False)
        for axes, (name, values) in zip(panels[0], curves.items()):
            axes.plot(range(1, len(values) + 1), values, marker="." if len(values) < 30 else None)
            axes.set_title(name, fontsize=9)
            axes.set_xlabel("epoch")
            axes.set_ylabel("loss")
        figure.tight_layout()
        return _svg(figure)


def confusion_matrix(confusion: Confusion) -> str:
    """Heat map of scans per (label, cluster), each label's row as shares of that label."""
    counts = np.asarray(confusion.counts, dtype=float)
    shares = counts / counts.sum(axis=1, keepdims=True).clip(1)
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(max(4, 0.45 * len(confusion.clusters) + 2),
                                             max(2.5, 0.3 * len(confusion.labels) + 1)))
        image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        axes.set_xticks(range(len(confusion.clusters)), confusion.clusters)
        axes.set_yticks(range(len(confusion.labels)), confusion.labels)
        axes.set_xlabel("cluster")
        for (row, column), count in np.ndenumerate(counts):
            if count:
                axes.text(column, row, int(count), ha="center", va="center", fontsize=7,
                          color="white" if shares[row, column] > 0.5 else "black")
        figure.colorbar(image, ax=axes, label="share of the label's scans")
        return _svg(figure)


def k_sweep(sweep: Sweep) -> str:
    """Stability, size entropy and (with labels) NMI against K, the chosen K marked."""
    ks = [p.k for p in sweep.points]
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=(5, 2.6))
        axes.plot(ks, [p.stability for p in sweep.points], marker="o", label="stability (ARI)")
        axes.plot(ks, [p.size_entropy for p in sweep.points], marker="s", label="size entropy")
        if all(p.scores for p in sweep.points):
            axes.plot(ks, [p.scores.nmi for p in sweep.points], marker="^", label="NMI (labels)")
        axes.axvline(sweep.chosen_k, color="grey", linestyle="--", label=f"chosen K = "
                     f"{sweep.chosen_k}")
        axes.set_xticks(ks)
        axes.set_xlabel("K (clusters)")
        axes.set_ylim(0, 1.05)
        axes.legend(fontsize=7, loc="lower left")
        return _svg(figure)

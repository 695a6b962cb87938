"""The figures of `fusc evaluate`, from arrays: no workdir, no Ray (jobs/evaluate.py reads and
writes). Each returns a part of `schemas.metrics.Evaluation`.

Label-free figures (sizes, size entropy, confidence, FUSC loss, NMI against site) and the flags
of degenerate results come for every model; label scores (purity, NMI, Hungarian accuracy, ARI,
the paper's Table 4, the confusion matrix) where scans carry labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from fusc_lib.metrics import (
    chance_confidence_warning,
    confusion,
    score_clusters,
    size_entropy,
    top_labels,
)
from schemas.metrics import (
    ClusterRow,
    Confusion,
    Evaluation,
    Flag,
    LabelFree,
    LabelledScores,
    Scores,
    Spread,
    ViewShare,
)

GIANT_SHARE = 0.5  # a cluster holding more than this share of the scans is flagged
# A cluster under this fraction of an even share (1/K of the scans) is flagged as tiny.
TINY_OF_EVEN_SHARE = 0.1


def label_free(clusters: np.ndarray, n_clusters: int, *, confidences: np.ndarray | None = None,
               fusc_loss: float | None = None, sites: Sequence[str] | None = None) -> LabelFree:
    """What the (N,) cluster ids show without labels; `confidences` (N,) top probabilities,
    `sites` (N,) the site of each scan."""
    sizes = np.bincount(clusters, minlength=n_clusters)
    return LabelFree(
        scans=int(sizes.sum()), sizes=sizes.tolist(),
        smallest_cluster_share=float(sizes.min() / sizes.sum()),
        largest_cluster_share=float(sizes.max() / sizes.sum()),
        size_entropy=size_entropy(sizes),
        mean_confidence=None if confidences is None else float(np.mean(confidences)),
        fusc_loss=fusc_loss,
        nmi_site=None if sites is None or len(set(sites)) < 2
        else float(normalized_mutual_info_score(sites, clusters)))


def scores(labels: Sequence[str], clusters: np.ndarray) -> Scores:
    """Purity, NMI, Hungarian accuracy, ARI and smallest cluster of `clusters` against
    `labels` (both (N,), N ≥ 1)."""
    return Scores(**score_clusters(list(labels), clusters).as_dict())


def labelled_scores(labels: Sequence[str], clusters: np.ndarray, confidences: np.ndarray,
                    n_clusters: int, names: dict[int, str | None], sizes: Sequence[int]
                    ) -> LabelledScores:
    """Scores, Table 4 and confusion matrix of the labelled scans: `labels`, `clusters` and
    `confidences` (N,) of those scans; `sizes` (K,) the scans of each cluster, labelled or
    not."""
    label_names, counts = confusion(labels, clusters, n_clusters)
    rows = []
    for cluster in range(n_clusters):
        members = clusters == cluster
        rows.append(ClusterRow(
            cluster_id=cluster, name=names.get(cluster), size=int(sizes[cluster]),
            labelled=int(members.sum()),
            top_views=[ViewShare(view=v, share=s)
                       for v, s in top_labels(counts[:, cluster], label_names)],
            mean_confidence=float(confidences[members].mean()) if members.any() else 0.0))
    return LabelledScores(scans=len(labels), classes=len(label_names),
                          scores=scores(labels, clusters), per_cluster=rows,
                          confusion=Confusion(labels=label_names, clusters=list(range(n_clusters)),
                                              counts=counts.tolist()))


def flags(figures: LabelFree, n_clusters: int, self_label_notes: Sequence[dict] = ()
          ) -> list[Flag]:
    """Degenerate results, each with what it means: a cluster over half the scans, empty or
    tiny clusters, assignments at chance confidence, and self-labeling that shrank its
    confident set or was rejected (`self_label_notes`: the notes of the self-label records
    that concern this model)."""
    found = []
    sizes = np.asarray(figures.sizes)
    giant = np.flatnonzero(sizes > GIANT_SHARE * figures.scans)
    found += [Flag(kind="giant_cluster", message=f"cluster {c} holds {sizes[c] / figures.scans:.0%} "
                   "of the scans: views are merged; try more clusters") for c in giant]
    found += [Flag(kind="empty_cluster", message=f"cluster {c} is empty: fewer views than "
                   "clusters, or a failed head; try fewer clusters") for c in np.flatnonzero(sizes == 0)]
    tiny = np.flatnonzero((sizes > 0) & (sizes < TINY_OF_EVEN_SHARE * figures.scans / n_clusters))
    found += [Flag(kind="tiny_cluster", message=f"cluster {c} holds only {sizes[c]} scans "
                   f"(an even share is {figures.scans // n_clusters})") for c in tiny]
    if figures.mean_confidence is not None:
        warning = chance_confidence_warning(figures.mean_confidence, n_clusters)
        if warning:
            found.append(Flag(kind="chance_confidence", message=warning))
    for notes in self_label_notes:
        found += _self_label_flags(notes)
    return found


def _self_label_flags(notes: dict) -> list[Flag]:
    found = []
    before, after = notes.get("confident_before"), notes.get("confident_after")
    if before is not None and after is not None and after < before:
        found.append(Flag(kind="self_label_shrank", message=f"self-labeling shrank the "
                          f"confident set from {before:.1%} to {after:.1%}"))
    if notes.get("accepted") is False:
        found.append(Flag(kind="self_label_rejected", message="self-labeling was rejected: "
                          + "; ".join(notes.get("reasons") or ["no reason recorded"])))
    return found


def spread(figures: Sequence[dict[str, float]]) -> dict[str, Spread]:
    """Mean, standard deviation, min and max of each figure over runs (a figure missing from
    a run is left out of that run)."""
    names = sorted({name for run in figures for name in run})
    result = {}
    for name in names:
        values = np.asarray([run[name] for run in figures if run.get(name) is not None])
        if len(values):
            result[name] = Spread(mean=float(values.mean()), std=float(values.std()),
                                  min=float(values.min()), max=float(values.max()))
    return result


def figures_of(label_free_figures: LabelFree, view_scores: Scores | None) -> dict[str, float]:
    """The numbers of one run, flat, for `spread`: label-free by name, label scores as
    `view_<metric>`."""
    flat = {name: value for name, value in label_free_figures.model_dump().items()
            if isinstance(value, float)}
    if view_scores:
        flat.update({f"view_{name}": value for name, value in view_scores.model_dump().items()})
    return flat


def score_rows(evaluation: Evaluation) -> list[dict]:
    """The scores table: the model on views and super-classes, then every baseline beside the
    model on the baselines' sample."""
    rows = [{"name": "model, views", "scans": evaluation.views.scans,
             "figures": list(evaluation.views.scores.model_dump().values())},
            {"name": "model, super-classes", "scans": evaluation.super_classes.scans,
             "figures": list(evaluation.super_classes.scores.model_dump().values())}]
    if evaluation.baselines:
        sample = evaluation.baselines[0]
        rows.append({"name": "model on the baselines' sample", "scans": sample.scans,
                     "figures": list(sample.model_scores.model_dump().values())})
    rows += [{"name": b.name, "scans": b.scans, "figures": list(b.scores.model_dump().values())}
             for b in evaluation.baselines]
    return rows

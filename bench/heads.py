"""FUSC heads against k-means on one workdir's clustering space, several seeds.

What the cluster stage alone buys, with the embeddings fixed: k-means (the paper's baseline) on
the embeddings as stored and on the site-centred space the heads train on, beside the heads with
SCAN's random start, the heads started from k-means prototypes (the default), those + frozen
self-labeling (what `fusc run` keeps), the heads with the k-means size prior, and heads trained
at 3 x K merged to K without labels (average linkage of the cluster means; greedy merging of the
two clusters that share the most kNN edges). Labels only score, except in the first line: a
logistic regression trained on the views and scored on each site held out (accuracy and recall
per view), the ceiling a clustering of these features is read against. Seconds per K on a few
hundred scans. The space is built from the stored embeddings and sites by today's code, and its
neighbours mined in it as `fusc neighbors` would, so a change to the clustering space is measured
without re-running the workdir's stages.

    .venv/bin/python -m bench.heads --workdir W --labels ../shared/data/fetal-planes-db-large/labels.csv \
        --clusters 15 6 4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, recall_score
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, cross_val_predict

from fusc_lib.clustering import self_label, train_cluster_heads
from fusc_lib.clustering_space import clustering_space, latest_embedding
from fusc_lib.config import NeighborsConfig
from fusc_lib.diagnostics import clustering_scores
from fusc_lib.labels import labels_of, load_labels
from fusc_lib.metrics import kmeans_clusters
from fusc_lib.neighbors import mine_neighbors
from fusc_lib.store import Workdir

COLUMNS = ("purity", "nmi", "accuracy", "smallest_cluster_share", "nmi_site")
PROBE_C = 10.0  # the probe's inverse L2 weight: the best of 0.1, 1 and 10 on african-planes


@dataclass(frozen=True)
class ProbeReading:
    """What a label-using linear probe reads of the view on scans of sites it never saw."""

    accuracy: float  # share of all scans whose held-out prediction is their view
    recall: dict[str, float]  # per view: share of its scans predicted as it

    def __str__(self) -> str:
        per_view = ", ".join(f"{view} {share:.2f}" for view, share in self.recall.items())
        return f"{self.accuracy:.3f} ({per_view})"


def linear_probe(x: np.ndarray, views: list[str], sites: list[str]) -> ProbeReading:
    """A logistic regression from (N, D) `x` to `views`, trained with the labels and asked
    for each scan with its site held out (5 stratified folds where all scans share one site):
    what a linear classifier can read of the view from these features. The accuracy pools
    every held-out prediction, so a site whose scans are easy does not count as a fold's
    worth; the recall per view shows which views the features hold apart."""
    by_site = len(set(sites)) > 1
    folds = LeaveOneGroupOut() if by_site else StratifiedKFold(5, shuffle=True, random_state=0)
    probe = LogisticRegression(C=PROBE_C, max_iter=3000)
    predicted = cross_val_predict(probe, x, views, groups=sites if by_site else None, cv=folds)
    names = sorted(set(views))
    recall = recall_score(views, predicted, labels=names, average=None)
    return ProbeReading(accuracy_score(views, predicted), dict(zip(names, recall.tolist())))


def merged_by_linkage(x: np.ndarray, assignments: np.ndarray, k: int) -> np.ndarray:
    """Each scan's cluster after merging the clusters of `assignments` to `k` by average
    linkage (cosine) of their unit mean vectors."""
    means = np.stack([x[assignments == c].mean(axis=0) for c in np.unique(assignments)])
    groups = fcluster(linkage(means, method="average", metric="cosine"), k, "maxclust") - 1
    return groups[np.searchsorted(np.unique(assignments), assignments)]


def merged_by_neighbors(assignments: np.ndarray, neighbors: np.ndarray, k: int) -> np.ndarray:
    """Each scan's cluster after greedily merging the two groups with the most kNN edges
    between them (normalised by the geometric mean of their edge counts) until `k` remain."""
    clusters = np.unique(assignments, return_inverse=True)[1]
    edges = np.zeros((clusters.max() + 1,) * 2)
    np.add.at(edges, (np.repeat(clusters, neighbors.shape[1]), clusters[neighbors.ravel()]), 1)
    edges += edges.T
    groups = [[c] for c in range(len(edges))]
    while len(groups) > k:
        def affinity(pair: tuple[int, int]) -> float:
            a, b = groups[pair[0]], groups[pair[1]]
            return edges[np.ix_(a, b)].sum() / np.sqrt(edges[a].sum() * edges[b].sum())
        i, j = max(((i, j) for i in range(len(groups)) for j in range(i)), key=affinity)
        groups[j] += groups.pop(i)
    group_of = np.zeros(len(edges), int)
    for index, members in enumerate(groups):
        group_of[members] = index
    return group_of[clusters]


def variants(x: np.ndarray, raw: np.ndarray, neighbors: np.ndarray, k: int, seed: int
             ) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a function giving each scan's cluster."""
    def heads(start: str, sizes: str = "uniform") -> np.ndarray:
        return train_cluster_heads(x, neighbors, k, start=start, sizes=sizes,
                                   seed=seed).assignments

    def heads_and_self_label() -> np.ndarray:
        start = train_cluster_heads(x, neighbors, k, seed=seed)
        return self_label(x, start, neighbors, seed=seed).result.assignments

    def over_clustered() -> np.ndarray:
        return train_cluster_heads(x, neighbors, 3 * k, seed=seed).assignments

    return {"k-means, embeddings as stored": lambda: kmeans_clusters(raw, k, seed),
            "k-means, site-centred": lambda: kmeans_clusters(x, k, seed),
            "heads, random start (SCAN)": lambda: heads("random"),
            "heads, k-means start (default)": lambda: heads("kmeans"),
            "  + self-label (fusc run)": heads_and_self_label,
            "heads, k-means start, --sizes kmeans": lambda: heads("kmeans", "kmeans"),
            "heads at 3K, merged by linkage": lambda: merged_by_linkage(x, over_clustered(), k),
            "heads at 3K, merged by kNN edges":
                lambda: merged_by_neighbors(over_clustered(), neighbors, k)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--embedding", default=None, help="default: the newest")
    parser.add_argument("--clusters", type=int, nargs="+", default=[15, 6, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    store = Workdir(args.workdir)
    key = args.embedding or latest_embedding(store)
    space = clustering_space(store, key)
    neighbors = mine_neighbors(space.vectors, NeighborsConfig().k)[0]
    views, sites = labels_of(load_labels(store, args.labels), space.image_ids)
    print(f"{args.workdir}: {len(views)} scans, embedding {key}, seeds {args.seeds}")
    print("linear probe with the labels, each site held out (accuracy, recall per view): "
          f"as stored {linear_probe(space.raw, views, sites)}; site-centred "
          f"{linear_probe(space.vectors, views, sites)}", flush=True)
    print("| K | variant | CP | NMI | ACC | smallest cluster | NMI vs site |")
    print("|---|---|---|---|---|---|---|")
    for k in args.clusters:
        runs: dict[str, list[dict]] = {}
        for seed in args.seeds:
            for name, cluster in variants(space.vectors, space.raw, neighbors, k, seed).items():
                runs.setdefault(name, []).append(clustering_scores(views, sites, cluster()))
        for name, scores in runs.items():
            cells = [f"{np.mean([s[c] for s in scores]):.3f} [{min(s[c] for s in scores):.3f}–"
                     f"{max(s[c] for s in scores):.3f}]" for c in COLUMNS]
            print(f"| {k} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

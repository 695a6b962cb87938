"""Site offsets that keep each site's mix of views: today's site means against offsets matched
on mutual nearest neighbours across sites, on one workdir's stored embeddings.

`fusc sites` centres each site (or inferred style group) on its mean. Where a group holds one
view more than the others (a preset used for one plane, a hospital without thorax scans), its
mean carries that view too, and centring takes some of the view out with the style. Matched
offsets estimate the style alone: each site's offset is the mean difference over its mutual
nearest-neighbour pairs with the scans of the other sites (MNN, Haghverdi et al., Nature
Biotechnology 36, 421-427, 2018), re-found in the corrected space for a few rounds. For each
space: the share of each scan's 20 nearest neighbours of its own view, k-means, and the FUSC
heads + frozen self-label (`fusc run`'s cluster stages) trained on neighbours mined in it.
Labels only score. Seconds to minutes on a few hundred scans.

    .venv/bin/python -m bench.centering --workdir W --labels L --clusters 15 6 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import faiss
import numpy as np

from fusc_lib.clustering import self_label, train_cluster_heads
from fusc_lib.clustering_space import clustering_space, latest_embedding
from fusc_lib.diagnostics import clustering_scores
from fusc_lib.labels import labels_of, load_labels
from fusc_lib.metrics import kmeans_clusters
from fusc_lib.neighbors import mine_neighbors
from fusc_lib.store import Workdir

MNN_K = 10  # neighbours searched each way for mutual pairs
MNN_ROUNDS = 3
NEIGHBORS = 20  # as `fusc neighbors`


def unit_centred(x: np.ndarray) -> np.ndarray:
    """(N, D) rows less their mean, at unit length."""
    x = x - x.mean(axis=0)
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def mutual_pairs(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (i of a, j of b) that are among each other's k nearest (inner product)."""
    a_to_b = faiss.knn(a, b, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    b_to_a = faiss.knn(b, a, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    pairs = [(i, j) for i in range(len(a)) for j in a_to_b[i] if i in b_to_a[j]]
    return tuple(np.asarray(side, dtype=np.int64) for side in zip(*pairs)) if pairs else (
        np.empty(0, np.int64), np.empty(0, np.int64))


def mnn_centred(x: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """(N, D) unit rows: `x` less each site's MNN-matched offset, then less the overall mean."""
    offsets = {site: np.zeros(x.shape[1], np.float32) for site in np.unique(sites)}
    y = unit_centred(x)
    for _ in range(MNN_ROUNDS):
        for site in offsets:
            mine, others = np.where(sites == site)[0], np.where(sites != site)[0]
            i, j = mutual_pairs(y[mine], y[others], MNN_K)
            if len(i):
                offsets[site] += (y[mine[i]] - y[others[j]]).mean(axis=0)
        y = unit_centred(x - np.stack([offsets[site] for site in sites]))
    return y


def clusterings(x: np.ndarray, neighbors: np.ndarray, k: int, seed: int
                ) -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a function giving each scan's cluster in `x` ((N, k) `neighbors` mined in it)."""
    def heads_and_self_label() -> np.ndarray:
        start = train_cluster_heads(x, neighbors, k, seed=seed)
        return self_label(x, start, neighbors, seed=seed).result.assignments

    return {"k-means": lambda: kmeans_clusters(x, k, seed),
            "heads + self-label": heads_and_self_label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--clusters", type=int, nargs="+", default=[4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    store = Workdir(args.workdir)
    space = clustering_space(store, latest_embedding(store))
    views, sites = labels_of(load_labels(store, args.labels), space.image_ids)
    groups = np.asarray(space.sites)
    spaces = {"as stored": unit_centred(space.raw), "site means (fusc run)": space.vectors,
              "MNN-matched offsets": mnn_centred(space.raw, groups)}
    names, counts = np.unique(groups, return_counts=True)
    print(f"{args.workdir}: {len(views)} scans, groups "
          f"{dict(zip(names.tolist(), counts.tolist()))}, seeds {args.seeds}")
    print("| space | 20-NN same view | K | clustering | CP | NMI | ACC | smallest |")
    print("|---|---|---|---|---|---|---|---|")
    for name, x in spaces.items():
        neighbors = mine_neighbors(x, NEIGHBORS)[0]
        same_view = (np.asarray(views)[neighbors] == np.asarray(views)[:, None]).mean()
        for k in args.clusters:
            runs: dict[str, list[dict]] = {}
            for seed in args.seeds:
                for method, cluster in clusterings(x, neighbors, k, seed).items():
                    runs.setdefault(method, []).append(clustering_scores(views, sites, cluster()))
            for method, scores in runs.items():
                cells = " | ".join(f"{np.mean([s[c] for s in scores]):.3f}" for c in
                                   ("purity", "nmi", "accuracy", "smallest_cluster_share"))
                print(f"| {name} | {same_view:.3f} | {k} | {method} | {cells} |", flush=True)


if __name__ == "__main__":
    main()

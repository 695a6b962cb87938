"""How good a clustering or an embedding is, against labels used only to score.

Cluster purity hides a starved cluster, so every report prints cluster sizes and the
Hungarian-matched accuracy beside it (see ../shared/reference/clustering-measurements.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


@dataclass(frozen=True)
class ClusterScores:
    purity: float
    nmi: float
    accuracy: float  # Hungarian-matched
    ari: float
    smallest_cluster_share: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def purity(labels: Sequence, clusters: Sequence[int]) -> float:
    """(1/N) sum over clusters of the size of its largest class."""
    table = contingency_matrix(labels, clusters)
    return float(table.max(axis=0).sum() / table.sum())


def hungarian_accuracy(labels: Sequence, clusters: Sequence[int]) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes."""
    table = contingency_matrix(labels, clusters)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def score_clusters(labels: Sequence, clusters: Sequence[int]) -> ClusterScores:
    """Purity, NMI (arithmetic mean normalisation, as in the paper), accuracy, ARI, sizes."""
    counts = np.unique(np.asarray(clusters), return_counts=True)[1]
    return ClusterScores(
        purity=purity(labels, clusters),
        nmi=float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic")),
        accuracy=hungarian_accuracy(labels, clusters),
        ari=float(adjusted_rand_score(labels, clusters)),
        smallest_cluster_share=float(counts.min() / counts.sum()),
    )


def kmeans_clusters(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N,) k-means cluster of each of the (N, D) vectors (scikit-learn, 10 initialisations).

    In float64: scikit-learn converts float32 input chunk by chunk, which made k-means++ 5-8×
    slower (bench/report.py)."""
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(
        np.asarray(vectors, dtype=np.float64))


def size_entropy(sizes: Sequence[int]) -> float:
    """Entropy of the cluster sizes over log K: 1 when all K clusters are equal, 0 when one
    cluster holds everything (empty clusters count, so they lower it)."""
    counts = np.asarray(sizes, dtype=np.float64)
    if len(counts) < 2 or counts.sum() == 0:
        return 0.0
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum() / np.log(len(counts)))


def stability(clusterings: Sequence[Sequence[int]]) -> float:
    """Mean adjusted Rand index between every pair of clusterings of the same scans: 1 when
    every run finds the same partition (Lange et al. 2004, "Stability-based validation of
    clustering solutions"). Raises ValueError for fewer than two clusterings."""
    if len(clusterings) < 2:
        raise ValueError("stability needs at least two clusterings")
    pairs = [adjusted_rand_score(a, b) for i, a in enumerate(clusterings)
             for b in clusterings[i + 1:]]
    return float(np.mean(pairs))


def confusion(labels: Sequence[str], clusters: Sequence[int], n_clusters: int
              ) -> tuple[list[str], np.ndarray]:
    """(label names sorted, (L, n_clusters) counts): scans of each label in each cluster id,
    empty clusters included as zero columns."""
    names = sorted(set(labels))
    row = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), n_clusters), dtype=np.int64)
    np.add.at(counts, ([row[label] for label in labels], np.asarray(clusters, dtype=np.int64)), 1)
    return names, counts


def top_labels(counts: np.ndarray, names: Sequence[str], n: int = 3) -> list[tuple[str, float]]:
    """The `n` most frequent labels of one cluster's column of counts, with their shares of
    it, largest first; ties by name; none for an empty cluster (the paper's Table 4)."""
    total = counts.sum()
    if total == 0:
        return []
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))[:n]
    return [(names[i], float(counts[i] / total)) for i in order if counts[i] > 0]


def knn_accuracy(vectors: np.ndarray, labels: Sequence, k: int = 10) -> float:
    """Leave-one-out k-NN accuracy (cosine, majority vote): does the embedding put views together?"""
    labels = np.asarray(labels)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    votes = labels[neighbours]
    predicted = [max(set(row), key=list(row).count) for row in votes]
    return float(np.mean(np.asarray(predicted) == labels))


def embedding_report(vectors: np.ndarray, views: Sequence, sites: Sequence,
                     seed: int = 0) -> dict[str, float]:
    """The two numbers that say whether an embedding groups anatomy or hospitals.

    kNN accuracy against `view` (higher is better) and NMI of a k-means (k = number of sites)
    against `site` (lower is better: less hospital style left).
    """
    site_clusters = kmeans_clusters(vectors, len(set(sites)), seed)
    view_clusters = kmeans_clusters(vectors, len(set(views)), seed)
    return {
        "knn_accuracy_view": knn_accuracy(vectors, views),
        "kmeans_nmi_view": float(normalized_mutual_info_score(views, view_clusters)),
        "kmeans_nmi_site": float(normalized_mutual_info_score(sites, site_clusters)),
    }


CHANCE_MARGIN = 1.5  # mean confidence under this many times chance (1/K) is flagged


def chance_confidence_warning(mean_confidence: float, n_clusters: int) -> str | None:
    """A warning when assignments are barely surer than a uniform guess, else None.

    Label-free: a head whose mean top probability stays near 1/K has not separated the scans
    (too many clusters for the data, or a failed training), whatever its cluster sizes say.
    """
    chance = 1.0 / n_clusters
    if mean_confidence >= CHANCE_MARGIN * chance:
        return None
    return (f"clusters at chance confidence: mean confidence {mean_confidence:.2f} where a "
            f"uniform guess over {n_clusters} clusters gives {chance:.2f}; try fewer clusters "
            "(--clusters) or more training (--cluster-epochs)")

"""The figures of `fusc evaluate` against cases worked by hand, and the choice of K."""

from __future__ import annotations

import numpy as np
import pytest

from fusc_lib.clustering import train_cluster_heads
from fusc_lib.evaluation import flags, label_free, labelled_scores, spread
from fusc_lib.k_sweep import choose_k, sweep
from fusc_lib.labels import ScanLabels
from fusc_lib.metrics import (
    hungarian_accuracy,
    purity,
    score_clusters,
    size_entropy,
    stability,
    top_labels,
)
from fusc_lib.neighbors import mine_neighbors
from schemas.metrics import SweepPoint


def test_purity_and_accuracy_by_hand_with_an_unused_cluster_id_and_a_one_scan_cluster():
    # Clusters 0, 1, 3 (id 2 unused: an empty cluster); cluster 3 holds one scan.
    views = ["brain", "brain", "heart", "heart", "heart", "femur"]
    clusters = [0, 0, 0, 1, 1, 3]
    # purity: cluster 0 → 2 brain, cluster 1 → 2 heart, cluster 3 → 1 femur: 5/6
    assert purity(views, clusters) == pytest.approx(5 / 6)
    # one cluster per view: 0→brain (2), 1→heart (2), 3→femur (1): 5/6
    assert hungarian_accuracy(views, clusters) == pytest.approx(5 / 6)
    # all in one cluster: purity = the largest view's share, accuracy the same
    assert purity(views, [0] * 6) == pytest.approx(3 / 6)
    assert hungarian_accuracy(views, [0] * 6) == pytest.approx(3 / 6)


def test_ties_count_once_in_purity_and_accuracy():
    views = ["a", "b", "a", "b"]
    clusters = [0, 0, 1, 1]  # each cluster a 50/50 tie
    assert purity(views, clusters) == pytest.approx(0.5)
    assert hungarian_accuracy(views, clusters) == pytest.approx(0.5)
    assert score_clusters(views, clusters).nmi == pytest.approx(0.0, abs=1e-12)


def test_size_entropy_counts_empty_clusters_and_stability_is_one_for_relabelled_runs():
    assert size_entropy([5, 5, 5, 5]) == pytest.approx(1.0)
    assert size_entropy([20, 0, 0, 0]) == pytest.approx(0.0)
    assert size_entropy([10, 10, 0, 0]) == pytest.approx(0.5)  # log 2 / log 4
    same_partition = [[0, 0, 1, 1, 2], [2, 2, 0, 0, 1]]
    assert stability(same_partition) == pytest.approx(1.0)
    assert stability([[0, 0, 1, 1], [0, 1, 0, 1]]) < 0.0 + 1e-9
    with pytest.raises(ValueError):
        stability([[0, 1]])


def test_table_4_rows_give_top_views_by_share_ties_by_name_and_empty_clusters():
    assert top_labels(np.array([2, 2, 1, 0]), ["c", "a", "b", "d"]) == [
        ("a", 0.4), ("c", 0.4), ("b", 0.2)]
    assert top_labels(np.zeros(3, int), ["a", "b", "c"]) == []
    views = ["brain", "brain", "heart"]
    clusters = np.array([0, 0, 2])
    table = labelled_scores(views, clusters, np.array([0.9, 0.7, 0.5]), 3, {0: "brain"},
                            sizes=[4, 0, 1])
    rows = {row.cluster_id: row for row in table.per_cluster}
    assert rows[0].name == "brain" and rows[0].size == 4 and rows[0].labelled == 2
    assert rows[0].mean_confidence == pytest.approx(0.8)
    assert rows[1].top_views == [] and rows[1].labelled == 0
    assert [(v.view, v.share) for v in rows[2].top_views] == [("heart", 1.0)]
    assert table.confusion.counts == [[2, 0, 0], [0, 0, 1]]


def test_super_classes_merge_views_and_keep_a_users_own_class_names():
    labels = ScanLabels("file", {"a": "4ch", "b": "lvot", "c": "brain", "d": "other",
                                 "e": "heart"})
    assert labels.super_classes() == {"a": "heart", "b": "heart", "c": "head", "d": "other",
                                      "e": "heart"}


def test_flags_name_giant_empty_tiny_and_chance_and_self_label_troubles():
    clusters = np.array([0] * 90 + [1] * 9 + [3])  # 90%, 9%, empty, 1 scan
    figures = label_free(clusters, 4, confidences=np.full(100, 0.3))
    kinds = [flag.kind for flag in flags(figures, 4, [
        {"confident_before": 0.5, "confident_after": 0.2, "accepted": False,
         "reasons": ["smallest cluster shrank"]}])]
    assert sorted(kinds) == ["chance_confidence", "empty_cluster", "giant_cluster",
                             "self_label_rejected", "self_label_shrank", "tiny_cluster"]
    even = label_free(np.repeat(np.arange(4), 25), 4, confidences=np.full(100, 0.9))
    assert flags(even, 4, [{"confident_before": 0.4, "confident_after": 0.6,
                            "accepted": True}]) == []


def test_spread_over_runs():
    result = spread([{"nmi": 0.5, "x": None}, {"nmi": 0.7}])
    assert result["nmi"].mean == pytest.approx(0.6) and result["nmi"].std == pytest.approx(0.1)
    assert "x" not in result


def _blobs(n_blobs: int, per_blob: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors around `n_blobs` orthogonal centres, all equally far apart."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:n_blobs]
    vectors = np.repeat(centres, per_blob, axis=0) + 0.08 * rng.normal(size=(n_blobs * per_blob,
                                                                            dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_k_sweep_picks_the_number_of_well_separated_groups():
    vectors = _blobs(5, 60)
    neighbors, _ = mine_neighbors(vectors, 10)
    views = [f"view{i // 60}" for i in range(len(vectors))]

    def train(k: int, seed: int):
        return train_cluster_heads(vectors, neighbors, k, n_heads=3, epochs=100, seed=seed)

    result = sweep([3, 5, 8], 3, train, labels=views)
    assert result.chosen_k == 5, result.reason
    point = {p.k: p for p in result.points}
    assert point[5].stability > 0.95 and point[5].scores.accuracy > 0.95
    assert point[5].stability > point[3].stability and point[5].stability > point[8].stability


def test_choose_k_prefers_the_larger_of_tied_ks_and_skips_empty_clusters():
    def point(k, stability, empty=0.0):
        return SweepPoint(k=k, seeds=3, fusc_loss=0, size_entropy=1, stability=stability,
                          smallest_cluster_share=0.1, empty_clusters=empty)

    assert choose_k([point(4, 0.90), point(6, 0.89), point(10, 0.6)])[0] == 6
    chosen, reason = choose_k([point(4, 0.80), point(6, 0.99, empty=1.0)])
    assert chosen == 4 and "K = 6 left clusters empty" in reason

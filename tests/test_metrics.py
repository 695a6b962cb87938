"""Clustering scores on hand-made labelings whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from fusc_lib.metrics import (
    chance_confidence_warning,
    embedding_report,
    hungarian_accuracy,
    knn_accuracy,
    purity,
    score_clusters,
)

LABELS = ["a", "a", "a", "b", "b", "c"]


def test_perfect_clustering_scores_one_whatever_the_cluster_ids():
    scores = score_clusters(LABELS, [7, 7, 7, 2, 2, 5])
    assert scores.purity == scores.accuracy == pytest.approx(1.0)
    assert scores.nmi == pytest.approx(1.0) and scores.ari == pytest.approx(1.0)
    assert scores.smallest_cluster_share == pytest.approx(1 / 6)


def test_purity_rewards_over_clustering_but_accuracy_does_not():
    singletons = list(range(6))
    assert purity(LABELS, singletons) == 1.0
    assert hungarian_accuracy(LABELS, singletons) == pytest.approx(3 / 6)


def test_one_big_cluster():
    assert purity(LABELS, [0] * 6) == pytest.approx(3 / 6)
    assert score_clusters(LABELS, [0] * 6).nmi == pytest.approx(0.0)


def test_embedding_report_separates_view_signal_from_site_signal():
    rng = np.random.default_rng(0)
    views = np.repeat([0, 1], 40)
    sites = np.tile([0, 1], 40)
    vectors = np.c_[views * 5.0, np.zeros(80)] + rng.normal(0, 0.3, (80, 2))
    report = embedding_report(vectors, views, sites)
    assert report["knn_accuracy_view"] > 0.95 and report["kmeans_nmi_view"] > 0.9
    assert report["kmeans_nmi_site"] < 0.1
    assert knn_accuracy(rng.normal(0, 1, (80, 2)), views) < 0.8  # noise carries no view


def test_chance_confidence_is_flagged():
    assert chance_confidence_warning(0.26, 4) is not None  # 1/4 is a uniform guess
    assert "chance confidence" in chance_confidence_warning(0.09, 15)
    assert chance_confidence_warning(0.9, 4) is None

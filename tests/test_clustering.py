"""Clustering heads and self-labeling on frozen synthetic embeddings with known groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.heads import linear_probe, merged_by_linkage, merged_by_neighbors
from fusc_lib.clustering import (
    PROTOTYPE_TEMPERATURE,
    TrainedHead,
    neighbours_used,
    self_label,
    train_cluster_heads,
)
from fusc_lib.metrics import hungarian_accuracy, kmeans_clusters
from fusc_lib.models.cluster_head import MultiHead, best_head
from fusc_lib.neighbors import mine_neighbors


def blobs(n: int = 400, groups: int = 4, dim: int = 64, spread: float = 1.0, seed: int = 0,
          shares: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `groups` random centres (equally common, or with `shares`)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(groups, n, p=shares)
    x = rng.standard_normal((groups, dim))[labels] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def four_blobs():
    x, labels = blobs()
    neighbors, _ = mine_neighbors(x, 20)
    return x, labels, neighbors, train_cluster_heads(x, neighbors, 4, seed=0)


def test_multi_head_gives_one_logit_matrix_per_head_and_best_is_lowest():
    out = MultiHead(8, 3, n_heads=5)(torch.randn(2, 8))
    assert len(out) == 5 and all(o.shape == (2, 3) for o in out)
    assert best_head([0.3, -1.2, 0.0, -1.2]) == 1


def test_heads_recover_well_separated_blobs(four_blobs):
    x, labels, _, result = four_blobs
    assert hungarian_accuracy(labels, result.assignments) >= 0.95
    totals = [loss.total for loss in result.head_losses]
    assert len(totals) == 10 and result.head_index == int(np.argmin(totals))
    assert torch.allclose(result.predict(x), result.probabilities, atol=1e-6)


def test_result_round_trips_through_state_dict_and_json(four_blobs):
    result = four_blobs[3]
    again = TrainedHead.from_state(result.state_dict(), result.to_json())
    assert again.head_index == result.head_index and again.head_losses == result.head_losses
    assert torch.equal(again.weight, result.weight)
    assert (again.assignments == result.assignments).all()


def test_an_over_clustering_merged_without_labels_recovers_the_true_groups():
    """Heads trained at 5 x K on well-separated groups split them; both label-free merges of
    `bench.heads` (linkage of the cluster means, shared kNN edges) bring back the K groups."""
    x, labels = blobs(n=300)
    neighbors, _ = mine_neighbors(x, 10)
    result = train_cluster_heads(x, neighbors, 20, n_heads=3, epochs=30)
    assert result.probabilities.shape == (300, 20)
    assert len(np.unique(result.assignments)) > 4
    assert hungarian_accuracy(labels, result.assignments) < 0.6
    for merged in (merged_by_linkage(x, result.assignments, 4),
                   merged_by_neighbors(result.assignments, neighbors, 4)):
        assert len(np.unique(merged)) == 4 and hungarian_accuracy(labels, merged) >= 0.95


def test_the_linear_probe_reads_views_that_are_there_and_not_views_that_are_not():
    x, labels = blobs(n=300)
    views = [f"view-{label}" for label in labels]
    sites = [f"site-{i % 3}" for i in range(300)]
    reading = linear_probe(x, views, sites)
    assert reading.accuracy >= 0.95 and min(reading.recall.values()) >= 0.9
    assert sorted(reading.recall) == sorted(set(views))
    assert linear_probe(x, views, ["one"] * 300).accuracy >= 0.95
    shuffled = list(np.random.default_rng(0).permutation(views))
    assert linear_probe(x, shuffled, sites).accuracy < 0.45


def test_heads_keep_the_sizes_of_an_imbalanced_archive_where_kmeans_does():
    """Views are not equally common in an archive. SCAN's entropy pulls every cluster to one
    size and splits the common view; the prior from each head's k-means keeps it whole."""
    x, labels = blobs(n=600, spread=1.5, seed=1, shares=[0.55, 0.25, 0.12, 0.08])
    neighbors, _ = mine_neighbors(x, 20)
    kmeans = hungarian_accuracy(labels, kmeans_clusters(x, 4, seed=1))
    equal = train_cluster_heads(x, neighbors, 4, seed=1, start="kmeans", sizes="uniform")
    prior = train_cluster_heads(x, neighbors, 4, seed=1, start="kmeans", sizes="kmeans")
    assert kmeans >= 0.95 and hungarian_accuracy(labels, equal.assignments) < 0.85
    assert hungarian_accuracy(labels, prior.assignments) >= kmeans - 0.02
    assert prior.config["sizes"] == "kmeans" and len(prior.config["prior"]) == 4
    assert abs(sum(prior.config["prior"]) - 1) < 1e-6 and max(prior.config["prior"]) > 0.45


def test_heads_started_from_kmeans_begin_at_its_prototypes():
    x, labels = blobs(n=300, seed=2)
    neighbors, _ = mine_neighbors(x, 10)
    started = train_cluster_heads(x, neighbors, 4, n_heads=2, epochs=1, lr=1e-6,
                                  start="kmeans", seed=3)
    assert hungarian_accuracy(labels, started.assignments) >= 0.95  # before any real training
    assert started.config["start"] == "kmeans"
    norms = started.weight.norm(dim=1)  # unit prototypes / PROTOTYPE_TEMPERATURE
    assert torch.allclose(norms, torch.full_like(norms, 1 / PROTOTYPE_TEMPERATURE), rtol=1e-3)


def test_self_label_keeps_or_improves_good_clusters(four_blobs):
    x, labels, neighbors, result = four_blobs
    outcome = self_label(x, result, neighbors, epochs=10)
    assert hungarian_accuracy(labels, outcome.result.assignments) >= 0.95
    assert outcome.after.filled_clusters == 4


def test_self_label_guard_keeps_the_input_when_the_result_is_worse(four_blobs):
    x, _, neighbors, result = four_blobs
    # noise 20× the vectors' norm: the head learns the targets' prior, not the features
    outcome = self_label(x, result, neighbors, epochs=20, noise=20.0, lr=0.05)
    assert not outcome.accepted
    assert any("confident set shrank" in reason for reason in outcome.reasons)
    assert outcome.result is result


def test_a_cluster_without_confident_samples_is_not_emptied(four_blobs):
    x, _, neighbors, result = four_blobs
    unsure = TrainedHead.from_state(result.state_dict(), result.metadata())
    cluster = int(unsure.assignments[0])
    unsure.weight = unsure.weight.clone()
    unsure.weight[cluster] *= 0.3  # that cluster's members are now far below 0.99
    unsure.probabilities = unsure.predict(x)
    assert (unsure.probabilities[unsure.assignments == cluster].max(1).values < 0.99).all()
    outcome = self_label(x, unsure, neighbors, epochs=10)
    assert (outcome.result.assignments == cluster).sum() > 0


def _counting_steps(monkeypatch) -> list[int]:
    """Counts Adam steps taken from now on (a spy: the real step still runs)."""
    steps, step = [], torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1),
                                                                         step(self, *a, **k))[1])
    return steps


def test_heads_and_self_label_train_within_their_budget_of_scans_seen(monkeypatch):
    x, labels = blobs(n=2000)
    neighbors, _ = mine_neighbors(x, 10)
    steps = _counting_steps(monkeypatch)
    # 10 epochs of 2,000 scans would be 200 steps of 100; a budget of 3,000 scans seen draws a
    # fresh 300 per epoch: 3 steps each.
    result = train_cluster_heads(x, neighbors, 4, n_heads=2, epochs=10, batch_size=100,
                                 samples=3000, seed=0)
    assert len(steps) == 30 and result.config["anchors_per_epoch"] == 300
    assert hungarian_accuracy(labels, result.assignments) >= 0.95  # every scan assigned
    assert len(result.assignments) == 2000
    steps.clear()
    outcome = self_label(x, result, neighbors, epochs=5, batch_size=100, samples=1000)
    assert len(steps) == 5 * 2 and len(outcome.result.assignments) == 2000
    steps.clear()
    train_cluster_heads(x, neighbors, 4, n_heads=2, epochs=2, batch_size=100, samples=None)
    assert len(steps) == 2 * 20  # no budget: full passes


def test_a_small_archive_pairs_each_scan_with_no_more_neighbours_than_half_a_cluster():
    """60 scans in 5 groups of ~12 with 20 neighbours mined: at most 6 are paired (60 / 10),
    so a scan's partners can all be of its group."""
    assert neighbours_used(20, 60, 5) == 6 and neighbours_used(20, 600, 15) == 20
    assert neighbours_used(20, 10, 8) == 1
    x, labels = blobs(n=60, groups=5, spread=1.1, seed=3)
    neighbors, _ = mine_neighbors(x, 20)
    result = train_cluster_heads(x, neighbors, 5, seed=0)
    assert result.config["k"] == 6
    # Its loss is judged later (self-label's guard) on the neighbours it was trained with.
    kept = result.head_losses[result.head_index].total
    assert result.loss_of(result.probabilities, torch.as_tensor(neighbors)).total == \
        pytest.approx(kept, rel=1e-5)
    assert hungarian_accuracy(labels, result.assignments) >= 0.9

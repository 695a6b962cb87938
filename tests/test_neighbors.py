"""Neighbour mining against brute force numpy, on both the exact and the approximate path."""

from __future__ import annotations

import numpy as np

from fusc_lib import neighbors
from fusc_lib.neighbors import choose_index, mine_neighbors


def unit_blobs(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim))
    x = centre[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def test_exact_path_equals_brute_force():
    x = unit_blobs(500, 32, 5)
    indices, similarities = mine_neighbors(x, 10)
    expected_indices, expected_similarities = brute_force(x, 10)
    assert choose_index(500).kind == "flat"
    assert indices.dtype == np.int64 and similarities.dtype == np.float32
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    assert (indices == expected_indices).mean() > 0.999  # ties may swap places


def test_approximate_path_keeps_recall_above_target(monkeypatch):
    monkeypatch.setattr(neighbors, "SEARCH_ROWS", 1_500)  # blocks of queries, the last one short
    x = unit_blobs(4000, 64, 20)
    assert choose_index(4000, exact_max=1000).kind == "ivf"
    indices, similarities = mine_neighbors(x, 20, exact_max=1000)
    truth, _ = brute_force(x, 20)
    recall = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(indices, truth)])
    assert recall >= 0.95
    assert not (indices == np.arange(4000)[:, None]).any()
    # the 8-bit codes only choose candidates: the similarities are the exact ones, best first
    np.testing.assert_allclose(similarities, np.einsum("nd,nkd->nk", x, x[indices]), atol=1e-5)
    assert (np.diff(similarities, axis=1) <= 1e-6).all()


def test_unnormalised_input_gives_cosine_neighbours():
    x = unit_blobs(300, 16, 3)
    scaled = x * np.random.default_rng(1).uniform(0.5, 5, (300, 1)).astype(np.float32)
    assert (mine_neighbors(scaled, 5)[0] == mine_neighbors(x, 5)[0]).mean() > 0.99


def test_duplicates_never_list_a_point_as_its_own_neighbour():
    x = unit_blobs(200, 16, 3)
    x = np.concatenate([x, np.repeat(x[:1], 30, axis=0)])  # 31 identical copies of row 0
    for exact_max in (None, 50):
        indices, similarities = mine_neighbors(x, 10, exact_max=exact_max)
        assert not (indices == np.arange(len(x))[:, None]).any()
        assert (indices >= 0).all()
        copies = [0, *range(200, 230)]
        assert np.isin(indices[copies], copies).all()  # twins find each other first
        np.testing.assert_allclose(similarities[copies], 1.0, atol=1e-5)

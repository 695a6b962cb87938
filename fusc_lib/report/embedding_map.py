"""The 2-D map of the clustering space: UMAP (McInnes, Healy & Melville 2018, umap-learn) of
the site-centred embeddings after PCA to 50 dimensions, as points in [0, 1]²."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

PCA_DIMENSIONS = 50  # UMAP on 50 PCA components: the neighbour graph is as good, far faster
UMAP_NEIGHBORS = 15  # umap-learn's default
# A seed makes the map reproducible; umap-learn then runs on one thread (n_jobs=1 says so).
MIN_UMAP_POINTS = 16  # fewer points: the first two PCA components


def map_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates in [0, 1] of (N, D) vectors, neighbours kept close. Raises
    ValueError for fewer than 2 vectors."""
    if len(vectors) < 2:
        raise ValueError("a map needs at least two scans")
    reduced = PCA(min(PCA_DIMENSIONS, *vectors.shape), random_state=seed).fit_transform(vectors)
    if len(vectors) < MIN_UMAP_POINTS or reduced.shape[1] < 2:
        points = np.pad(reduced[:, :2], ((0, 0), (0, max(0, 2 - reduced.shape[1]))))
    else:
        import umap  # numba compiles on first use: imported only when a map is drawn

        points = umap.UMAP(n_neighbors=min(UMAP_NEIGHBORS, len(vectors) - 1),
                           random_state=seed, n_jobs=1).fit_transform(reduced)
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - low) / np.where(high > low, high - low, 1.0)

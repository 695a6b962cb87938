"""`fusc neighbors`: the k nearest neighbours of every scan into the `neighbors` table.

Mined with faiss (`fusc_lib.neighbors`: exact, or IVF calibrated to recall ≥ 0.95, on GPU when
faiss has one) in the clustering space: embeddings centred per site, so neighbours are scans
of the same view more than scans of the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np
import pyarrow as pa

from fusc_lib.clustering_space import clustering_space, latest_embedding
from fusc_lib.config import NeighborsConfig
from fusc_lib.neighbors import choose_index, mine_neighbors
from fusc_lib.store import Workdir
from schemas.tables import NEIGHBORS

ROWS_PER_CHUNK = 65_536  # rows of `neighbors` built at once: 92 MB of ids at k = 20


@dataclass
class NeighborsSummary:
    embedding: str
    scans: int
    k: int
    index: str
    mean_similarity: float
    seconds: float
    folded: dict[str, str]  # one-view style group -> the group whose mean centred it


def run_neighbors(workdir: Workdir, config: NeighborsConfig) -> NeighborsSummary:
    started = monotonic()
    embedding, use_gpu = config.embedding or latest_embedding(workdir), config.use_gpu
    space = clustering_space(workdir, embedding)
    k = min(config.k, len(space.image_ids) - 1)
    indices, similarities = mine_neighbors(space.vectors, k, use_gpu=use_gpu)
    rows = neighbor_rows(space.image_ids, embedding, indices, similarities)
    if workdir.has_table(NEIGHBORS):
        workdir.delete_where(NEIGHBORS, "embedding_key", [embedding])
    workdir.append(NEIGHBORS, rows)
    return NeighborsSummary(embedding, rows.num_rows, k,
                            choose_index(rows.num_rows, use_gpu=use_gpu).describe(),
                            float(similarities.mean()), monotonic() - started,
                            space.centering.folded)


def neighbor_rows(image_ids: list[str], embedding: str, indices: np.ndarray,
                  similarities: np.ndarray) -> pa.Table:
    """`neighbors` rows of (N, k) neighbour `indices` into `image_ids` and their cosine
    `similarities`, built in Arrow (no Python object per neighbour: 1M of them at 50,000 scans),
    ROWS_PER_CHUNK rows per chunk (a string array holds at most 2 GiB)."""
    ids = pa.array(image_ids, pa.string())
    chunks = []
    for start in range(0, len(ids), ROWS_PER_CHUNK):
        near, similar = indices[start:start + ROWS_PER_CHUNK], similarities[start:start + ROWS_PER_CHUNK]
        offsets = pa.array(np.arange(0, near.size + 1, near.shape[1], dtype=np.int32))
        chunks.append(pa.table({
            "image_id": ids[start:start + len(near)],
            "embedding_key": pa.repeat(pa.scalar(embedding, pa.string()), len(near)),
            "neighbor_ids": pa.ListArray.from_arrays(offsets, ids.take(pa.array(near.ravel()))),
            "similarities": pa.ListArray.from_arrays(
                offsets, pa.array(similar.astype(np.float32).ravel())),
        }))
    return pa.concat_tables(chunks)

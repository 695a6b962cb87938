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


@dataclass
class NeighborsSummary:
    embedding: str
    scans: int
    k: int
    index: str
    mean_similarity: float
    seconds: float


def run_neighbors(workdir: Workdir, config: NeighborsConfig) -> NeighborsSummary:
    started = monotonic()
    embedding, use_gpu = config.embedding or latest_embedding(workdir), config.use_gpu
    space = clustering_space(workdir, embedding)
    k = min(config.k, len(space.image_ids) - 1)
    indices, similarities = mine_neighbors(space.vectors, k, use_gpu=use_gpu)
    ids = np.asarray(space.image_ids, dtype=object)
    rows = pa.table({
        "image_id": pa.array(space.image_ids, pa.string()),
        "embedding_key": pa.array([embedding] * len(ids), pa.string()),
        "neighbor_ids": pa.array(ids[indices].tolist(), pa.list_(pa.string())),
        "similarities": pa.array(similarities.tolist(), pa.list_(pa.float32())),
    })
    if workdir.has_table(NEIGHBORS):
        workdir.delete_where(NEIGHBORS, "embedding_key", [embedding])
    workdir.append(NEIGHBORS, rows)
    return NeighborsSummary(embedding, len(ids), k,
                            choose_index(len(ids), use_gpu=use_gpu).describe(),
                            float(similarities.mean()), monotonic() - started)


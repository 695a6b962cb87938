"""`fusc cluster`: stage 2, the FUSC heads on frozen embeddings, saved as a cluster model.

Reads the clustering space (embeddings centred per site) and the mined neighbours, trains
`heads` linear heads together on the FUSC loss and keeps the lowest-loss one
(`fusc_lib.clustering`). The result becomes the current cluster model version.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np
from pydantic import BaseModel, Field

from fusc_lib.cluster_model import ClusterModel, new_version
from fusc_lib.clustering import DEFAULT_EPOCHS, DEFAULT_LR, train_cluster_heads
from fusc_lib.store import Workdir
from jobs._vectors import clustering_space
from jobs.neighbors import load_neighbors
from jobs.sites import load_site_model


class ClusterConfig(BaseModel):
    """Every option of `fusc cluster`."""

    embedding: str = Field(description="embeddings.model_run to cluster (`fusc embed` prints it).")
    clusters: int = Field(ge=2, description="Number of clusters C (over-clustering: C ≫ views).")
    heads: int = Field(10, ge=1, description="Heads trained together; the lowest-loss is kept.")
    entropy_weight: float = Field(5.0, ge=0, description="λ: weight of the entropy of the mean "
                                                         "prediction (spreads the clusters).")
    epochs: int = Field(DEFAULT_EPOCHS, ge=1)
    lr: float = Field(DEFAULT_LR, gt=0)
    batch_size: int = Field(128, ge=2)
    seed: int = 0


@dataclass
class ClusterSummary:
    version: str
    scans: int
    sizes: list[int]
    head_index: int
    loss: float
    seconds: float


def run_cluster(workdir: Workdir, config: ClusterConfig) -> ClusterSummary:
    started = monotonic()
    space = clustering_space(workdir, config.embedding)
    if config.clusters > len(space.image_ids):
        raise ValueError(f"{config.clusters} clusters for {len(space.image_ids)} scans")
    neighbors = load_neighbors(workdir, config.embedding, space.image_ids)
    result = train_cluster_heads(space.vectors, neighbors, config.clusters,
                                 n_heads=config.heads, entropy_weight=config.entropy_weight,
                                 epochs=config.epochs, batch_size=config.batch_size,
                                 lr=config.lr, seed=config.seed)
    sizes = np.bincount(result.assignments, minlength=config.clusters).tolist()
    model = ClusterModel(version=new_version(config.clusters), embedding=config.embedding,
                         centering=space.centering, site_model=load_site_model(workdir),
                         head=result, notes={"stage": "cluster", "sizes": sizes})
    model.save(workdir)
    return ClusterSummary(model.version, len(space.image_ids), sizes, result.head_index,
                          result.head_losses[result.head_index].total, monotonic() - started)

"""`fusc cluster`: stage 2, the FUSC heads, saved as the current cluster model version.

Frozen mode (default, fast on CPU): reads the clustering space (embeddings centred per site) and
the mined neighbours, trains `heads` linear heads together on the FUSC loss and keeps the
lowest-loss one (`fusc_lib.clustering`).

Network mode (the paper's) is a flow, `jobs.run.cluster_flow`: the backbone and the heads train
together on augmented neighbour pairs with Ray Train (`jobs.train_ssl`), the scans are embedded
with the fine-tuned backbone, their neighbours mined again, and then this job trains the frozen
heads on that space, so assignment and serving read one kind of model.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np

from fusc_lib.cluster_model import ClusterModel, new_version
from fusc_lib.clustering import train_cluster_heads
from fusc_lib.clustering_space import clustering_space, latest_embedding, load_neighbors
from fusc_lib.config import ClusterConfig
from fusc_lib.sites import load_site_model
from fusc_lib.store import Workdir


@dataclass
class ClusterSummary:
    version: str
    scans: int
    sizes: list[int]
    head_index: int
    loss: float
    seconds: float


def run_cluster(workdir: Workdir, config: ClusterConfig) -> ClusterSummary:
    """Frozen mode: the heads on the embedding's clustering space and its mined neighbours."""
    started = monotonic()
    if config.mode == "network":
        raise ValueError("network mode trains the backbone first: run it through "
                         "jobs.run.cluster_flow (`fusc cluster --mode network`)")
    if not config.embedding:
        config = config.model_copy(update={"embedding": latest_embedding(workdir)})
    space = clustering_space(workdir, config.embedding)
    if config.clusters > len(space.image_ids):
        raise ValueError(f"{config.clusters} clusters for {len(space.image_ids)} scans")
    neighbors = load_neighbors(workdir, config.embedding, space.image_ids)
    result = train_cluster_heads(space.vectors, neighbors, config.clusters,
                                 n_heads=config.heads, entropy_weight=config.entropy_weight,
                                 epochs=config.epochs, batch_size=config.batch_size,
                                 lr=config.lr, start=config.start, sizes=config.sizes,
                                 samples=config.samples, seed=config.seed)
    sizes = np.bincount(result.assignments, minlength=config.clusters).tolist()
    model = ClusterModel(version=new_version(config.clusters), embedding=config.embedding,
                         centering=space.centering, site_model=load_site_model(workdir),
                         head=result, notes={"stage": "cluster", "sizes": sizes,
                                             "config": config.model_dump()})
    model.save(workdir)
    return ClusterSummary(model.version, len(space.image_ids), sizes, result.head_index,
                          result.head_losses[result.head_index].total, monotonic() - started)


"""`fusc cluster`: stage 2, the FUSC heads, saved as the current cluster model version.

Frozen mode (default, fast on CPU): reads the clustering space (embeddings centred per site) and
the mined neighbours, trains `heads` linear heads together on the FUSC loss and keeps the
lowest-loss one (`fusc_lib.clustering`).

Network mode (the paper's): first the backbone and the heads train together on augmented
neighbour pairs with Ray Train (`fusc_lib.models.fusc_network`, through the SSL training job:
workers, GPU, checkpoints and resume as there); the fine-tuned backbone is saved as a model
run `<ssl run>-fusc<C>`, the scans are embedded with it, their neighbours mined again, and the
frozen heads trained on that space, so assignment and serving read one kind of model.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np

from fusc_lib.cluster_model import ClusterModel, new_version
from fusc_lib.clustering import train_cluster_heads
from fusc_lib.clustering_space import clustering_space, latest_embedding
from fusc_lib.config import ClusterConfig, NeighborsConfig, SSLConfig
from fusc_lib.models.encoder import parse_embedding_key
from fusc_lib.store import Workdir
from jobs._network import backbone_of, train_and_embed
from jobs.neighbors import load_neighbors, run_neighbors
from jobs.sites import load_site_model
from schemas.tables import SCANS


@dataclass
class ClusterSummary:
    version: str
    scans: int
    sizes: list[int]
    head_index: int
    loss: float
    seconds: float


def run_cluster(workdir: Workdir, config: ClusterConfig,
                ray_address: str | None = None) -> ClusterSummary:
    started = monotonic()
    if not config.embedding:
        config = config.model_copy(update={"embedding": latest_embedding(workdir)})
    if config.mode == "network":
        embedding = fine_tune_backbone(workdir, config, ray_address)
        config = config.model_copy(update={"embedding": embedding, "mode": "frozen"})
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
                         head=result, notes={"stage": "cluster", "sizes": sizes,
                                             "config": config.model_dump()})
    model.save(workdir)
    return ClusterSummary(model.version, len(space.image_ids), sizes, result.head_index,
                          result.head_losses[result.head_index].total, monotonic() - started)


def fine_tune_backbone(workdir: Workdir, config: ClusterConfig, ray_address: str | None) -> str:
    """Network mode: FUSC-train backbone + heads on neighbour pairs, embed with the result and
    mine its neighbours; returns the new embedding key. A finished fine-tune is reused and a
    killed one resumed."""
    views = parse_embedding_key(config.embedding)[1]
    embedding = train_and_embed(workdir, network_config(workdir, config), views, ray_address)
    run_neighbors(workdir, NeighborsConfig(embedding=embedding, k=config.k))
    return embedding


def network_config(workdir: Workdir, config: ClusterConfig) -> SSLConfig:
    """The training config of network mode, starting from the embedding's backbone."""
    model, _ = parse_embedding_key(config.embedding)
    backbone, init, size = backbone_of(workdir, model)
    return SSLConfig(profile="fusc-network", run_name=f"{model.replace(':', '-').replace('@', '-')}-fusc"
                     f"{config.clusters}", method="fusc", backbone=backbone, init=init,
                     image_size=size, epochs=config.network_epochs, lr=config.network_lr,
                     batch_size=config.network_batch_size, strength=0.5,
                     fusc_clusters=config.clusters, fusc_heads=config.heads,
                     entropy_weight=config.entropy_weight, neighbors_of=config.embedding,
                     workers=config.workers, use_gpu=config.use_gpu, seed=config.seed
                     ).fitted_to(workdir.table(SCANS).count_rows())

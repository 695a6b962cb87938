"""A cluster model with its assignments, in its clustering space: what `fusc evaluate` scores
and `fusc report` shows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from fusc_lib.cluster_model import ClusterModel
from fusc_lib.clustering import TrainedHead, train_cluster_heads
from fusc_lib.clustering_space import ClusteringSpace, clustering_space, load_neighbors
from fusc_lib.store import Workdir

HEAD_OPTIONS = ("n_heads", "entropy_weight", "epochs", "batch_size", "lr", "weight_decay",
                "start", "sizes")


class AssignedModel:
    """A cluster model with what it is scored and shown on: its clustering space (embeddings
    centred per site), the mined neighbours, and its assignments, rows in image id order
    (`rows`: each assigned scan's row in the space)."""

    def __init__(self, workdir: Workdir, model: ClusterModel):
        self.model = model
        self.space: ClusteringSpace = clustering_space(workdir, model.embedding)
        self.neighbors = load_neighbors(workdir, model.embedding, self.space.image_ids)
        assigned = workdir.assignments(model.version, ["image_id", "cluster_id", "confidence"])
        row = {image_id: i for i, image_id in enumerate(self.space.image_ids)}
        keep = [image_id in row for image_id in assigned.column("image_id").to_pylist()]
        assigned = assigned.filter(pa.array(keep)).sort_by("image_id")
        if not assigned.num_rows:
            raise ValueError(f"model {model.version} has assigned no scans: run `fusc assign`")
        self.image_ids = assigned.column("image_id").to_pylist()
        self.rows = np.asarray([row[i] for i in self.image_ids])  # into the space
        self.clusters = assigned.column("cluster_id").to_numpy()
        self.confidences = assigned.column("confidence").to_numpy()

    @property
    def sites(self) -> list[str]:
        return [self.space.sites[r] for r in self.rows]

    def fusc_loss(self, head: TrainedHead) -> float:
        return head.loss_of(head.predict(self.space.vectors),
                            torch.as_tensor(self.neighbors)).total

    def train(self, k: int, seed: int) -> TrainedHead:
        """The model's heads trained again at `k` clusters with `seed` (its other settings)."""
        options = {name: value for name, value in self.model.head.config.items()
                   if name in HEAD_OPTIONS}
        return train_cluster_heads(self.space.vectors, self.neighbors, k, **options, seed=seed)

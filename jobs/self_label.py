"""`fusc self-label`: stage 3, the current head fine-tuned on its own confident predictions.

Kept only when its label-free checks (FUSC loss, smallest cluster, confident set, stability of
the first confident labels) did not get worse; otherwise the input model stays current and the
reasons are recorded in a rejected version, so nothing silently starves a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np
from pydantic import BaseModel, Field

from fusc_lib.cluster_model import ClusterModel, new_version
from fusc_lib.clustering import self_label
from fusc_lib.store import Workdir
from jobs._vectors import clustering_space
from jobs.neighbors import load_neighbors


class SelfLabelConfig(BaseModel):
    """Every option of `fusc self-label`."""

    model: str | None = Field(None, description="Cluster model version; None: the current one.")
    threshold: float = Field(0.99, gt=0, le=1, description="Confidence that makes a target.")
    epochs: int = Field(50, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


@dataclass
class SelfLabelSummary:
    version: str  # the current model afterwards: the new one if accepted, else the input
    accepted: bool
    reasons: list[str]
    confident_before: float
    confident_after: float
    sizes: list[int]
    seconds: float


def run_self_label(workdir: Workdir, config: SelfLabelConfig) -> SelfLabelSummary:
    started = monotonic()
    start = ClusterModel.load(workdir, config.model)
    space = clustering_space(workdir, start.embedding)
    neighbors = load_neighbors(workdir, start.embedding, space.image_ids)
    start.head.probabilities = start.head.predict(space.vectors)
    outcome = self_label(space.vectors, start.head, neighbors, threshold=config.threshold,
                         epochs=config.epochs, lr=config.lr, seed=config.seed)
    sizes = np.bincount(outcome.result.assignments, minlength=start.n_clusters).tolist()
    notes = {"stage": "self-label", "input": start.version, "accepted": outcome.accepted,
             "reasons": outcome.reasons, "label_stability": outcome.label_stability,
             "sizes": sizes}
    model = ClusterModel(version=new_version(start.n_clusters, "-sl"), embedding=start.embedding,
                         centering=space.centering, site_model=start.site_model,
                         head=outcome.result, names=start.names, notes=notes)
    model.save(workdir, make_current=outcome.accepted)
    return SelfLabelSummary(model.version if outcome.accepted else start.version,
                            outcome.accepted, outcome.reasons, outcome.before.confident_share,
                            outcome.after.confident_share, sizes, monotonic() - started)

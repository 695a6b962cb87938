"""`fusc self-label`: stage 3, the current head fine-tuned on its own confident predictions.

Frozen mode (default, fast on CPU): the head alone, on the stored embeddings, with feature
noise and dropout as the strong augmentation (`fusc_lib.clustering.self_label`).

Network mode (the paper's) is a flow, `jobs.run.self_label_flow`: backbone and head train
together on images with Ray Train — the weak view names the targets, a strongly augmented view
learns them (`fusc_lib.models.self_label_network`, through `jobs.train_ssl`: workers, GPU,
checkpoints and resume as there) — and the run `selflabel-<input version>` is embedded like any
model run; this job then judges that run's head on its clustering space (per-site centering
refitted), given the run as `trained`.

Either way the result is kept only when its label-free checks (FUSC loss over the input's
neighbours, smallest cluster, confident set, stability of the first confident labels) did not
get worse; otherwise the input model stays current and the reasons are recorded in a rejected
version, so nothing silently starves a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np

from fusc_lib.cluster_model import ClusterModel, new_version
from fusc_lib.clustering import (
    SelfLabelOutcome,
    head_probabilities,
    judge_self_label,
    self_label,
)
from fusc_lib.clustering_space import ClusteringSpace, clustering_space, load_neighbors
from fusc_lib.config import SelfLabelConfig, SSLConfig
from fusc_lib.models.encoder import embedding_key, parse_embedding_key
from fusc_lib.models.self_label_network import read_head
from fusc_lib.sites import SiteCentering
from fusc_lib.store import Workdir


@dataclass
class SelfLabelSummary:
    version: str  # the current model afterwards: the new one if accepted, else the input
    written: str  # the version this stage wrote (kept for the record when rejected)
    accepted: bool
    reasons: list[str]
    confident_before: float
    confident_after: float
    sizes: list[int]
    seconds: float


def run_self_label(workdir: Workdir, config: SelfLabelConfig,
                   trained: SSLConfig | None = None) -> SelfLabelSummary:
    """Self-label the input model (frozen mode), or judge `trained`, the network run that
    `jobs.run.self_label_flow` trained and embedded for it (network mode)."""
    started = monotonic()
    if config.mode == "network" and trained is None:
        raise ValueError("network mode trains the backbone first: run it through "
                         "jobs.run.self_label_flow (`fusc self-label --mode network`)")
    start = ClusterModel.load(workdir, config.cluster_model)
    space = clustering_space(workdir, start.embedding)
    neighbors = load_neighbors(workdir, start.embedding, space.image_ids)
    start.head.probabilities = start.head.predict(space.vectors)
    if config.mode == "network":
        embedding, centering, outcome = _judge_network(workdir, config, trained, start, space,
                                                       neighbors)
    else:
        embedding, centering = start.embedding, space.centering
        outcome = self_label(space.vectors, start.head, neighbors, threshold=config.threshold,
                             epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                             samples=config.samples, seed=config.seed)
    if not outcome.accepted:  # the record of a rejected try is the input model, unchanged
        embedding, centering = start.embedding, space.centering
    sizes = np.bincount(outcome.result.assignments, minlength=start.n_clusters).tolist()
    notes = {"stage": "self-label", "mode": config.mode, "input": start.version,
             "accepted": outcome.accepted, "reasons": outcome.reasons,
             "label_stability": outcome.label_stability, "sizes": sizes,
             "confident_before": outcome.before.confident_share,
             "confident_after": outcome.after.confident_share}
    model = ClusterModel(version=new_version(start.n_clusters, "-sl"), embedding=embedding,
                         centering=centering, site_model=start.site_model,
                         head=outcome.result, notes=notes)
    model.save(workdir, make_current=outcome.accepted)
    return SelfLabelSummary(model.version if outcome.accepted else start.version,
                            model.version, outcome.accepted, outcome.reasons,
                            outcome.before.confident_share, outcome.after.confident_share,
                            sizes, monotonic() - started)


def _judge_network(workdir: Workdir, config: SelfLabelConfig, ssl: SSLConfig,
                   start: ClusterModel, space: ClusteringSpace, neighbors: np.ndarray
                   ) -> tuple[str, SiteCentering, SelfLabelOutcome]:
    """Judge the head of network run `ssl` on the space of its embedding (same views as the
    input's); returns (its embedding key, its centering, the outcome)."""
    embedding = embedding_key(ssl.run, parse_embedding_key(start.embedding)[1])
    trained = clustering_space(workdir, embedding)
    rows = _rows_of(trained.image_ids, space.image_ids)
    head = read_head(workdir.ssl_run_dir(ssl.run))
    probabilities = head_probabilities(trained.vectors[rows], head["weight"], head["bias"])
    settings = {"mode": "network", "run": ssl.run, "threshold": config.threshold,
                "epochs": ssl.epochs, "lr": ssl.lr, "batch_size": ssl.batch_size}
    outcome = judge_self_label(start.head, head["weight"], head["bias"], probabilities,
                               neighbors, settings, threshold=config.threshold)
    return embedding, trained.centering, outcome


def _rows_of(available: list[str], wanted: list[str]) -> np.ndarray:
    """Row in `available` of each id in `wanted` (the scans the input model was judged on)."""
    row = {image_id: i for i, image_id in enumerate(available)}
    missing = [image_id for image_id in wanted if image_id not in row]
    if missing:
        raise ValueError(f"{len(missing)} scans of the input model have no embedding from the "
                         "self-labeled network")
    return np.asarray([row[image_id] for image_id in wanted])


"""`fusc self-label`: stage 3, the current head fine-tuned on its own confident predictions.

Frozen mode (default, fast on CPU): the head alone, on the stored embeddings, with feature
noise and dropout as the strong augmentation (`fusc_lib.clustering.self_label`).

Network mode (the paper's): backbone and head together on images with Ray Train — the weak
view names the targets, a strongly augmented view learns them
(`fusc_lib.models.self_label_network`, through the SSL training job: workers, GPU, checkpoints
and resume as there). The run `selflabel-<input version>` is then embedded like any model run,
its per-site centering refitted, and its head judged on that space.

Either way the result is kept only when its label-free checks (FUSC loss over the input's
neighbours, smallest cluster, confident set, stability of the first confident labels) did not
get worse; otherwise the input model stays current and the reasons are recorded in a rejected
version, so nothing silently starves a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np

from fusc_lib.artifacts import exists
from fusc_lib.cluster_model import ClusterModel, new_version
from fusc_lib.clustering import (
    SelfLabelOutcome,
    head_probabilities,
    judge_self_label,
    self_label,
)
from fusc_lib.clustering_space import ClusteringSpace, clustering_space
from fusc_lib.config import SelfLabelConfig, SSLConfig
from fusc_lib.layout import SELF_LABEL_START
from fusc_lib.models.encoder import parse_embedding_key
from fusc_lib.models.self_label_network import read_head, write_start
from fusc_lib.sites import SiteCentering
from fusc_lib.store import Workdir
from jobs._network import backbone_of, train_and_embed
from jobs.neighbors import load_neighbors
from schemas.tables import SCANS


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
                   ray_address: str | None = None) -> SelfLabelSummary:
    started = monotonic()
    start = ClusterModel.load(workdir, config.cluster_model)
    space = clustering_space(workdir, start.embedding)
    neighbors = load_neighbors(workdir, start.embedding, space.image_ids)
    start.head.probabilities = start.head.predict(space.vectors)
    if config.mode == "network":
        embedding, centering, outcome = _self_label_network(workdir, config, start, space,
                                                            neighbors, ray_address)
    else:
        embedding, centering = start.embedding, space.centering
        outcome = self_label(space.vectors, start.head, neighbors, threshold=config.threshold,
                             epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                             seed=config.seed)
    if not outcome.accepted:  # the record of a rejected try is the input model, unchanged
        embedding, centering = start.embedding, space.centering
    sizes = np.bincount(outcome.result.assignments, minlength=start.n_clusters).tolist()
    notes = {"stage": "self-label", "mode": config.mode, "input": start.version,
             "accepted": outcome.accepted, "reasons": outcome.reasons,
             "label_stability": outcome.label_stability, "sizes": sizes}
    model = ClusterModel(version=new_version(start.n_clusters, "-sl"), embedding=embedding,
                         centering=centering, site_model=start.site_model,
                         head=outcome.result, names=start.names, notes=notes)
    model.save(workdir, make_current=outcome.accepted)
    return SelfLabelSummary(model.version if outcome.accepted else start.version,
                            model.version, outcome.accepted, outcome.reasons,
                            outcome.before.confident_share, outcome.after.confident_share,
                            sizes, monotonic() - started)


def _self_label_network(workdir: Workdir, config: SelfLabelConfig, start: ClusterModel,
                        space: ClusteringSpace, neighbors: np.ndarray, ray_address: str | None
                        ) -> tuple[str, SiteCentering, SelfLabelOutcome]:
    """Train (or resume, or reuse) the network run of `start`, embed the scans with it and
    judge its head there; returns (its embedding key, its centering, the outcome)."""
    ssl = network_config(workdir, config, start)
    if not exists(ssl.selflabel_start):  # the same for every try of this input
        write_start(ssl.selflabel_start, start.head.weight, start.head.bias, space.centering)
    views = parse_embedding_key(start.embedding)[1]
    embedding = train_and_embed(workdir, ssl, views, ray_address)
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


def network_config(workdir: Workdir, config: SelfLabelConfig, start: ClusterModel) -> SSLConfig:
    """The training config of network mode: the input model's backbone and head, SimCLR-strength
    augmentations for the strong view."""
    backbone, init, size = backbone_of(workdir, parse_embedding_key(start.embedding)[0])
    run = f"selflabel-{start.version}"
    return SSLConfig(profile="selflabel-network", run_name=run, method="selflabel",
                     backbone=backbone, init=init, image_size=size, epochs=config.network_epochs,
                     lr=config.network_lr, batch_size=config.network_batch_size, strength=1.0,
                     selflabel_start=f"{workdir.ssl_run_dir(run)}/{SELF_LABEL_START}",
                     selflabel_threshold=config.threshold, workers=config.workers,
                     use_gpu=config.use_gpu, seed=config.seed
                     ).fitted_to(workdir.table(SCANS).count_rows())

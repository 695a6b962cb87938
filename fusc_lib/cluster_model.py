"""A cluster model version: everything that turns an embedding into a cluster, in one folder.

`models/cluster/<version>/` holds `head.pt` (the kept linear head) and `model.json`: which
embedding it reads (SSL run and number of averaged views), the per-site centering and the
style-group model for scans without a named site, the head's training record, and for
self-labeling whether it was accepted and why. Cluster names are the review's (the `review`
table, fusc_lib/review.py), read when a model is loaded.
`models/cluster/current.json` names the version `fusc assign`, `fusc export` and `fusc serve`
use; a stage changes it only by writing a new version, so the previous one stays loadable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch

from fusc_lib.artifacts import exists, load_torch, read_bytes, save_torch, write_bytes
from fusc_lib.clustering import TrainedHead
from fusc_lib.layout import CLUSTER_MODEL_INFO, CURRENT_CLUSTER_MODEL, HEAD_WEIGHTS
from fusc_lib.review import review_state
from fusc_lib.sites import SiteCentering, SiteModel
from fusc_lib.store import Workdir


@dataclass
class ClusterModel:
    version: str
    embedding: str  # the embedding key the head reads (`<ssl run>[~views<n>]`)
    centering: SiteCentering
    site_model: SiteModel | None  # None when every training scan had a named site
    head: TrainedHead
    names: dict[int, str] = field(default_factory=dict)  # the review's, named clusters only
    notes: dict = field(default_factory=dict)  # stage records: self-label outcome, sizes, ...

    @property
    def n_clusters(self) -> int:
        return self.head.n_clusters

    def probabilities(self, vectors: np.ndarray, sites: list[str]) -> np.ndarray:
        """(N, C) cluster probabilities of raw embeddings from the given sites."""
        return self.head.predict(self.centering.apply(vectors, sites)).numpy()

    def save(self, workdir: Workdir, make_current: bool = True) -> str:
        folder = workdir.cluster_model_dir(self.version)
        save_torch(f"{folder}/{HEAD_WEIGHTS}", {"weight": self.head.weight, "bias": self.head.bias})
        meta = {"version": self.version, "embedding": self.embedding,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "centering": self.centering.to_dict(),
                "site_model": self.site_model.to_dict() if self.site_model else None,
                "head": self.head.metadata(), "notes": self.notes}
        write_bytes(f"{folder}/{CLUSTER_MODEL_INFO}", json.dumps(meta, indent=1).encode())
        if make_current:
            set_current(workdir, self.version)
        return folder

    @classmethod
    def load(cls, workdir: Workdir, version: str | None = None) -> ClusterModel:
        """The named version, or the current one."""
        version = version or current_version(workdir)
        folder = workdir.cluster_model_dir(version)
        if not exists(f"{folder}/{CLUSTER_MODEL_INFO}"):
            raise ValueError(f"no cluster model {version!r} in {folder}")
        meta = json.loads(read_bytes(f"{folder}/{CLUSTER_MODEL_INFO}"))
        state = load_torch(f"{folder}/{HEAD_WEIGHTS}")
        n = state["weight"].shape[0]
        head = TrainedHead.from_state({**state, "probabilities": torch.empty(0, n)},
                                        meta["head"])
        return cls(version=meta["version"], embedding=meta["embedding"],
                   centering=SiteCentering.from_dict(meta["centering"]),
                   site_model=SiteModel.from_dict(meta["site_model"])
                   if meta["site_model"] else None,
                   head=head, names=review_state(workdir, version).names,
                   notes=meta.get("notes", {}))


def model_info(workdir: Workdir, version: str) -> dict:
    """The model.json of `version` (its record: embedding, head, notes, names) without
    loading weights; {} when there is none."""
    path = f"{workdir.cluster_model_dir(version)}/{CLUSTER_MODEL_INFO}"
    return json.loads(read_bytes(path)) if exists(path) else {}


def set_current(workdir: Workdir, version: str) -> None:
    """Make `version` the model that assign, serve, evaluate and review use by default."""
    workdir.write_json({"version": version}, *CURRENT_CLUSTER_MODEL)


def current_version(workdir: Workdir) -> str:
    current = workdir.read_json(*CURRENT_CLUSTER_MODEL)
    if not current:
        raise ValueError(f"no cluster model in {workdir.root}: run `fusc cluster` (or `fusc run`)")
    return current["version"]


def new_version(n_clusters: int, suffix: str = "") -> str:
    """A sortable, unique version name: UTC time and cluster count."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-c{n_clusters}{suffix}"

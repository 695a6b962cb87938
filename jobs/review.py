"""What a reviewer reads and changes: the clusters of a model version with their names and
suggestions, a cluster's scans ranked as strays, decisions recorded, and a review carried to a
new version (`fusc clusters ...`, the review page). Decisions themselves: fusc_lib/review.py.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from fusc_lib.assigned_model import AssignedModel
from fusc_lib.cluster_model import ClusterModel, current_version
from fusc_lib.io import scan_name
from fusc_lib.review import (
    CarryReport,
    Decision,
    ReviewState,
    carry,
    history,
    neighbors_elsewhere,
    record,
    review_state,
    stray_scores,
    suggestions,
)
from fusc_lib.store import Workdir
from fusc_lib.views import UNKNOWN
from schemas.tables import REVIEW

REVIEWER_ENV = "FUSC_REVIEWER"


def reviewer() -> str | None:
    """Who is reviewing: $FUSC_REVIEWER, else the login name, else unknown (None)."""
    return os.environ.get(REVIEWER_ENV) or os.environ.get("USER") or None


@dataclass
class ClusterView:
    """One cluster as a reviewer sees it."""

    cluster_id: int
    size: int
    name: str | None
    suggested: str | None
    suggested_share: float
    mixed: bool
    moved_out: int  # its scans moved to a name
    excluded: int
    mean_confidence: float


@dataclass
class Stray:
    image_id: str
    file: str
    confidence: float
    stray_score: float  # in [0, 1]: higher = more likely misplaced
    neighbors_elsewhere: float  # share of its neighbours in other clusters
    label: str | None
    label_source: str | None


class Review:
    """The review of one model version (the current one by default) over its assignments."""

    def __init__(self, workdir: Workdir, version: str | None = None):
        self.workdir = workdir
        self.version = version or current_version(workdir)
        self.model = ClusterModel.load(workdir, self.version)
        table = workdir.assignments(self.version, ["image_id", "cluster_id", "confidence"])
        if not table.num_rows:
            raise ValueError(f"model {self.version} has assigned no scans: run `fusc assign`")
        table = table.sort_by("image_id")
        self.image_ids = table["image_id"].to_pylist()
        self.clusters = table["cluster_id"].to_numpy()
        self.confidences = table["confidence"].to_numpy()
        self.assigned = frozenset(self.image_ids)
        scans = workdir.scans(["image_id", "source_uri", "frame", "pseudo_view"])
        self.files = {i: scan_name(u, f) for i, u, f in zip(
            scans["image_id"].to_pylist(), scans["source_uri"].to_pylist(),
            scans["frame"].to_pylist())}
        pseudo = dict(zip(scans["image_id"].to_pylist(), scans["pseudo_view"].to_pylist()))
        self.suggested = suggestions([pseudo.get(i, UNKNOWN) for i in self.image_ids],
                                     self.clusters,
                                     self.model.n_clusters)

    @property
    def state(self) -> ReviewState:
        return review_state(self.workdir, self.version)

    def overview(self, state: ReviewState | None = None) -> list[ClusterView]:
        """Every cluster under the review `state` (default: read now)."""
        state = state or self.state
        sizes = np.bincount(self.clusters, minlength=self.model.n_clusters)
        moved = np.asarray([i in state.moved for i in self.image_ids], dtype=bool)
        excluded = np.asarray([i in state.excluded for i in self.image_ids], dtype=bool)
        views = []
        for cluster in range(self.model.n_clusters):
            members = self.clusters == cluster
            name, share = self.suggested.get(cluster, (None, 0.0))
            views.append(ClusterView(
                cluster_id=cluster, size=int(sizes[cluster]), name=state.names.get(cluster),
                suggested=name, suggested_share=share, mixed=cluster in state.mixed,
                moved_out=int(moved[members].sum()), excluded=int(excluded[members].sum()),
                mean_confidence=float(self.confidences[members].mean())
                if sizes[cluster] else 0.0))
        return views

    @functools.cached_property
    def stray_ranking(self) -> tuple[np.ndarray, np.ndarray]:
        """(stray score, share of neighbours elsewhere), (N,) each in assigned-scan order:
        computed once per Review (it reads the whole clustering space)."""
        data = AssignedModel(self.workdir, self.model)
        if data.image_ids != self.image_ids:
            raise ValueError(f"the assignments of {self.version} changed: reload the review")
        assigned_row = np.full(len(data.space.image_ids), -1)  # space row -> assigned row
        assigned_row[data.rows] = np.arange(len(data.rows))
        # the cluster of each neighbour; one not assigned (-1) counts as elsewhere
        neighbor_clusters = np.append(data.clusters, -1)[assigned_row[data.neighbors[data.rows]]]
        return (stray_scores(data.space.vectors[data.rows], data.clusters, data.confidences,
                             neighbor_clusters),
                neighbors_elsewhere(data.clusters, neighbor_clusters))

    def strays(self, cluster: int, offset: int = 0, limit: int = 50) -> list[Stray]:
        """A cluster's scans, most likely misplaced first (`fusc_lib.review.stray_scores`)."""
        self.check_cluster(cluster)
        scores, elsewhere = self.stray_ranking
        members = np.flatnonzero(self.clusters == cluster)
        ranked = members[np.argsort(-scores[members], kind="stable")][offset:offset + limit]
        state, suggested = self.state, self.suggested.get(cluster, (None,))[0]
        return [Stray(self.image_ids[r], self.files.get(self.image_ids[r], ""),
                      float(self.confidences[r]), float(scores[r]), float(elsewhere[r]),
                      *state.label(self.image_ids[r], cluster, suggested))
                for r in ranked]

    def check_cluster(self, cluster: int) -> None:
        if not 0 <= cluster < self.model.n_clusters:
            raise ValueError(f"model {self.version} has clusters 0–{self.model.n_clusters - 1}, "
                             f"not {cluster}")

    def scan_id(self, given: str) -> str:
        """The image id of a scan this version assigned, as a reviewer typed it: the id, a
        unique prefix of it (8+ characters), or a file name only one assigned scan has."""
        if given in self.assigned:
            return given
        matches = [i for i in self.image_ids if len(given) >= 8 and i.startswith(given)] or \
                  [i for i in self.image_ids if self.files.get(i) == given]
        if len(matches) != 1:
            raise ValueError(f"{given!r} names {len(matches) or 'no'} scans of model "
                             f"{self.version}: give its image id (fusc clusters review ID)")
        return matches[0]

    def decide(self, decisions: list[Decision]) -> None:
        """Record decisions made on this version, after checking their clusters and scans."""
        for decision in decisions:
            if decision.model_version != self.version:
                raise ValueError(f"a decision on {decision.model_version} given to the review "
                                 f"of {self.version}")
            if decision.cluster_id is not None:
                self.check_cluster(decision.cluster_id)
            if decision.image_id is not None and decision.image_id not in self.assigned:
                raise ValueError(f"model {self.version} assigned no scan {decision.image_id!r}")
        record(self.workdir, decisions)


def carry_review(workdir: Workdir, version: str) -> CarryReport | None:
    """Give `version` the review of the latest other version that has one, when it has none
    itself; returns what was carried and what could not be, or None when there was nothing to
    carry."""
    if not workdir.has_table(REVIEW) or review_state(workdir, version).decisions:
        return None
    made = history(workdir).filter(pc.field("model_version") != version)
    if not made.num_rows:
        return None
    source = made["model_version"][-1].as_py()  # reviewed last
    report = carry(review_state(workdir, source), version, _assigned(workdir, source),
                   _assigned(workdir, version))
    record(workdir, report.carried)
    return report


def _assigned(workdir: Workdir, version: str) -> dict[str, int]:
    table = workdir.assignments(version, ["image_id", "cluster_id"])
    return dict(zip(table["image_id"].to_pylist(), table["cluster_id"].to_pylist()))

"""The clinicians' review: names for clusters, strays moved or excluded, kept as decisions.

Every decision is a row appended to the `review` table (schemas/tables.py), never rewritten, so
the history stays and two reviewers saving at once lose nothing. The state of a model
version's review is its decisions replayed in the order they were made (`review_state`):
- a cluster's **name** (merging clusters is naming them alike; renaming is naming again; a
  null name clears it) and whether it is **mixed** (needs splitting);
- a scan **moved** to a name, **excluded** (not a scan of interest: a blank frame, a report
  page), or **restored** to its cluster.
A scan's label is then, first that applies: excluded (no label), moved, its cluster's name,
the cluster's suggested name (the majority typed view name, see `suggestions`), none.

A new model version inherits the review of the previous one (`carry`): scan decisions as they
are, cluster names where one of its clusters holds most of a named cluster's scans.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusc_lib.store import Workdir
from fusc_lib.views import UNKNOWN
from schemas.tables import REVIEW, REVIEW_SCHEMA

CLUSTER_ACTIONS = ("name", "mixed", "unmixed")
SCAN_ACTIONS = ("move", "exclude", "restore")
# Label sources, as `fusc export` writes them.
EXCLUDED, MOVED, CLUSTER, SUGGESTED = "excluded", "moved", "cluster", "suggested"
SUGGEST_MIN_SHARE = 0.5  # of the cluster's scans with a typed view name
SUGGEST_MIN_SCANS = 3
CARRY_MIN_OVERLAP = 0.5  # Jaccard of a named cluster's scans and its match in the new version
MAX_NAME = 200  # characters of a name


@dataclass
class Decision:
    """One review decision (see the module doc for the actions)."""

    action: str
    model_version: str
    cluster_id: int | None = None
    image_id: str | None = None
    name: str | None = None
    reviewer: str | None = None
    carried_from: str | None = None

    def __post_init__(self):
        if self.action in CLUSTER_ACTIONS and self.cluster_id is None:
            raise ValueError(f"{self.action}: which cluster?")
        if self.action in SCAN_ACTIONS and not self.image_id:
            raise ValueError(f"{self.action}: which scan?")
        if self.action not in (*CLUSTER_ACTIONS, *SCAN_ACTIONS):
            raise ValueError(f"unknown review action {self.action!r}")
        if self.action == "move" and not (self.name or "").strip():
            raise ValueError("move: give the name to move the scan to")
        if self.name is not None:
            self.name = self.name.strip() or None
            if self.name and len(self.name) > MAX_NAME:
                raise ValueError(f"a name is at most {MAX_NAME} characters")


def record(workdir: Workdir, decisions: Sequence[Decision]) -> None:
    """Append decisions, in one commit, stamped now (microseconds, in order)."""
    now = datetime.now(UTC)
    rows = [{**asdict(d), "decision_id": str(uuid.uuid4()),
             "made_at": now + timedelta(microseconds=i)} for i, d in enumerate(decisions)]
    if rows:
        workdir.append(REVIEW, pa.Table.from_pylist(rows, schema=REVIEW_SCHEMA))


def history(workdir: Workdir, version: str | None = None) -> pa.Table:
    """Every decision (of `version`, or of all), oldest first."""
    table = workdir.read(REVIEW, filter=None if version is None
                         else pc.field("model_version") == version)
    return table.sort_by([("made_at", "ascending"), ("decision_id", "ascending")])


@dataclass
class ReviewState:
    """A version's review after replaying its decisions."""

    version: str
    names: dict[int, str] = field(default_factory=dict)  # named clusters only
    mixed: set[int] = field(default_factory=set)
    moved: dict[str, str] = field(default_factory=dict)  # image_id -> name
    excluded: set[str] = field(default_factory=set)
    decisions: int = 0

    def label(self, image_id: str, cluster_id: int, suggested: str | None = None
              ) -> tuple[str | None, str | None]:
        """(label, label source) of one scan: see the module doc."""
        if image_id in self.excluded:
            return None, EXCLUDED
        if image_id in self.moved:
            return self.moved[image_id], MOVED
        if cluster_id in self.names:
            return self.names[cluster_id], CLUSTER
        return (suggested, SUGGESTED) if suggested else (None, None)

    def apply(self, decision: dict) -> None:
        action, cluster, image = decision["action"], decision["cluster_id"], decision["image_id"]
        if action == "name":
            self.names.pop(cluster, None)
            if decision["name"]:
                self.names[cluster] = decision["name"]
        elif action in ("mixed", "unmixed"):
            (self.mixed.add if action == "mixed" else self.mixed.discard)(cluster)
        else:
            self.moved.pop(image, None)
            self.excluded.discard(image)
            if action == "move":
                self.moved[image] = decision["name"]
            elif action == "exclude":
                self.excluded.add(image)
        self.decisions += 1


def review_state(workdir: Workdir, version: str) -> ReviewState:
    """The review of `version`: its decisions replayed in the order they were made."""
    state = ReviewState(version)
    for decision in history(workdir, version).to_pylist():
        state.apply(decision)
    return state


def suggestions(pseudo_views: Sequence[str], clusters: np.ndarray, n_clusters: int
                ) -> dict[int, tuple[str, float]]:
    """cluster -> (its majority typed view name, that name's share of the cluster's scans
    that carry one), where the share is at least SUGGEST_MIN_SHARE of SUGGEST_MIN_SCANS or
    more such scans. `pseudo_views` and `clusters` are (N,), one per scan."""
    found = {}
    for cluster in range(n_clusters):
        typed = Counter(v for v, c in zip(pseudo_views, clusters) if c == cluster and v != UNKNOWN)
        total = sum(typed.values())
        if total >= SUGGEST_MIN_SCANS:
            name, count = typed.most_common(1)[0]
            if count / total >= SUGGEST_MIN_SHARE:
                found[cluster] = (name, count / total)
    return found


def stray_scores(vectors: np.ndarray, clusters: np.ndarray, confidences: np.ndarray,
                 neighbor_clusters: np.ndarray) -> np.ndarray:
    """(N,) how likely each scan is misplaced, in [0, 1], higher first to check: the mean of
    its doubt (1 − confidence), its distance from its cluster's centre (1 − cosine, halved)
    and the share of its k neighbours in other clusters (`neighbor_clusters` (N, k): the
    cluster of each neighbour). `vectors` (N, D) are the unit vectors of the clustering space.
    The three signals SCAN and clinicians both use to spot a misplaced scan."""
    centres = np.zeros((int(clusters.max()) + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(centres, clusters, vectors)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True).clip(1e-12)
    distance = (1.0 - (vectors * centres[clusters]).sum(axis=1)) / 2.0
    return ((1.0 - confidences) + distance + neighbors_elsewhere(clusters, neighbor_clusters)) / 3


def neighbors_elsewhere(clusters: np.ndarray, neighbor_clusters: np.ndarray) -> np.ndarray:
    """(N,) share of each scan's neighbours in another cluster than its own."""
    return (neighbor_clusters != clusters[:, None]).mean(axis=1)


@dataclass
class CarryReport:
    carried: list[Decision]
    not_carried: list[str]  # each: what could not be carried, and why


def carry(from_state: ReviewState, to_version: str, old: dict[str, int], new: dict[str, int]
          ) -> CarryReport:
    """The decisions of `from_state` restated for `to_version`. `old` and `new` map image id
    to cluster under each version. Scan decisions carry as they are; a cluster's name (and
    mixed mark) goes to the new cluster holding most of its scans when their overlap (Jaccard,
    over the scans both versions assigned) is at least CARRY_MIN_OVERLAP and no other name
    claims that cluster."""
    common = old.keys() & new.keys()
    members_old = _members({i: old[i] for i in common})
    members_new = _members({i: new[i] for i in common})
    claims: dict[int, set[str]] = {}
    matches: dict[int, int] = {}
    not_carried = []
    for cluster in sorted(set(from_state.names) | from_state.mixed):
        match, overlap = _best_match(members_old.get(cluster, set()), members_new)
        what = f"cluster {cluster} ({from_state.names.get(cluster, 'mixed')})"
        if match is None or overlap < CARRY_MIN_OVERLAP:
            not_carried.append(f"{what}: no cluster of {to_version} holds most of its scans "
                               f"(best overlap {overlap:.0%})")
            continue
        matches[cluster] = match
        claims.setdefault(match, set()).add(from_state.names.get(cluster, ""))
    carried = []
    for cluster, match in matches.items():
        names = claims[match] - {""}
        if len(names) > 1:
            not_carried.append(f"cluster {cluster} ({from_state.names[cluster]}): cluster "
                               f"{match} of {to_version} matches {' and '.join(sorted(names))}")
            continue
        if cluster in from_state.names:
            carried.append(_carried("name", to_version, from_state, cluster_id=match,
                                    name=from_state.names[cluster]))
        if cluster in from_state.mixed:
            carried.append(_carried("mixed", to_version, from_state, cluster_id=match))
    carried += [_carried("move", to_version, from_state, image_id=i, name=n)
                for i, n in sorted(from_state.moved.items())]
    carried += [_carried("exclude", to_version, from_state, image_id=i)
                for i in sorted(from_state.excluded)]
    return CarryReport(carried, not_carried)


def _carried(action: str, version: str, source: ReviewState, **fields) -> Decision:
    return Decision(action=action, model_version=version, reviewer="carried",
                    carried_from=source.version, **fields)


def _members(assigned: dict[str, int]) -> dict[int, set[str]]:
    members: dict[int, set[str]] = {}
    for image_id, cluster in assigned.items():
        members.setdefault(cluster, set()).add(image_id)
    return members


def _best_match(scans: set[str], clusters: dict[int, set[str]]) -> tuple[int | None, float]:
    """The cluster sharing most of `scans` (None when several share as many: a cluster split
    evenly is not carried, whatever order the clusters come in), and its Jaccard overlap."""
    if not scans:
        return None, 0.0
    shared = {c: len(scans & members) for c, members in clusters.items()}
    most = max(shared.values())
    tied = sorted(c for c, n in shared.items() if n == most)
    overlap = shared[tied[0]] / len(scans | clusters[tied[0]])
    return (tied[0] if len(tied) == 1 else None), overlap

"""`fusc assign`: the cluster of every scan under a cluster model into `assignments`.

Ray Data batch inference: read the model's embeddings, centre them by site and apply the
head in an actor pool (the model loaded once per actor); the driver commits rows as they come.
Incremental like `fusc embed`: scans already assigned by this version are skipped. Every scan
with a vector of the model's embedding is assigned; those `fusc sites` has not seen get their
site from the model's saved style groups, exactly as `fusc serve` does for a new scan. Scans
ingested after the model was made have no such vector yet: `jobs.run.assign_flow` (what
`fusc assign` runs) embeds them with the model's encoder and views first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from time import monotonic

import numpy as np
import pyarrow as pa
import ray

from fusc_lib.cluster_model import ClusterModel, current_version
from fusc_lib.id_sets import contains, sorted_ids
from fusc_lib.progress import progress_bar
from fusc_lib.sites import SCAN_SITE_COLUMNS, sites_of_scan_rows
from fusc_lib.store import Workdir, rows_by_id, utc_now
from fusc_lib.table_appender import TableAppender
from jobs.ray_runtime import cluster_cpus, ray_for_job, read_for_actors
from schemas.tables import ASSIGNMENTS, DUPLICATES, SCANS

COMMIT_ROWS = 50_000


@dataclass
class AssignSummary:
    version: str
    assigned: int
    already_done: int
    sizes: list[int]  # scans per cluster under this version, all of them
    seconds: float
    embedded: int = 0  # scans embedded first by `jobs.run.assign_flow` (new since the model)
    copies: int = 0  # files whose bytes equal an assigned scan's (`duplicates`): its cluster
    mean_confidence: float = 0.0  # over every scan under this version; 1/K is chance
    review_carried: int = 0  # decisions carried from the last reviewed version
    review_not_carried: list[str] = field(default_factory=list)  # and what could not be, why


class _AssignActor:
    def __init__(self, workdir_root: str, version: str, done_ref: ray.ObjectRef,
                 sites_ref: ray.ObjectRef, scans_uri: str):
        self.model = ClusterModel.load(Workdir(workdir_root), version)
        self.done = ray.get(done_ref)
        self.sites = ray.get(sites_ref)
        self.scans_uri = scans_uri

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = batch.filter(pa.array(~contains(self.done, batch.column("image_id"))))
        ids = batch.column("image_id").to_pylist()
        vectors = np.asarray(batch.column("vector").combine_chunks().flatten(),
                             dtype=np.float32).reshape(len(ids), -1)
        unseen = [image_id for image_id in ids if image_id not in self.sites]
        if unseen:
            self.sites.update(self._sites_of_new_scans(unseen))
        probabilities = self.model.probabilities(vectors, [self.sites[i] for i in ids]) \
            if ids else np.zeros((0, self.model.n_clusters), np.float32)
        return assignment_rows(ids, probabilities, self.model.version)

    def _sites_of_new_scans(self, image_ids: list[str]) -> dict[str, str | None]:
        rows = rows_by_id(self.scans_uri, image_ids, ["image_id", *SCAN_SITE_COLUMNS])
        return dict(zip(rows.column("image_id").to_pylist(),
                        sites_of_scan_rows(rows, self.model.site_model)))


def assignment_rows(image_ids: list[str], probabilities: np.ndarray, version: str) -> pa.Table:
    clusters = probabilities.argmax(axis=1) if len(image_ids) else np.zeros(0, np.int64)
    return pa.table({
        "image_id": pa.array(image_ids, pa.string()),
        "cluster_id": pa.array(clusters.astype(np.int32)),
        "confidence": pa.array(probabilities.max(axis=1, initial=0).astype(np.float32)),
        "probabilities": pa.array(probabilities.astype(np.float32).tolist(),
                                  pa.list_(pa.float32())),
        "model_version": pa.array([version] * len(image_ids), pa.string()),
        "assigned_at": pa.array([utc_now()] * len(image_ids), pa.timestamp("ms", tz="UTC")),
    })


def run_assign(workdir: Workdir, version: str | None = None,
               ray_address: str | None = None) -> AssignSummary:
    started = monotonic()
    version = version or current_version(workdir)
    model = ClusterModel.load(workdir, version)
    done = assigned_ids(workdir, version)
    total = workdir.embeddings_table(model.embedding).count_rows()
    appended = 0
    if total > len(done):
        with ray_for_job(ray_address):
            appended = _stream_assignments(workdir, model, done, total - len(done))
    clusters, confidences = _assigned(workdir, version)
    return AssignSummary(version, appended, len(done),
                         np.bincount(clusters, minlength=model.n_clusters).tolist(),
                         monotonic() - started, 0, _copies(workdir),
                         float(confidences.mean()) if len(confidences) else 0.0)


def _stream_assignments(workdir: Workdir, model: ClusterModel, done: pa.Array,
                        pending: int) -> int:
    site_of = workdir.site_of()
    actors = min(cluster_cpus(), max(1, pending // 100_000 + 1))
    dataset = (read_for_actors(workdir.embeddings_table(model.embedding).uri,
                               ["image_id", "vector"], actors)
               .map_batches(_AssignActor, batch_size=4096, batch_format="pyarrow",
                            fn_constructor_kwargs={"workdir_root": workdir.root,
                                                   "version": model.version,
                                                   "done_ref": ray.put(sorted_ids(done)),
                                                   "sites_ref": ray.put(site_of),
                                                   "scans_uri": workdir.indexed_uri(SCANS)},
                            num_cpus=1, compute=ray.data.ActorPoolStrategy(size=actors)))
    sink = TableAppender(partial(workdir.append, ASSIGNMENTS), COMMIT_ROWS)
    with progress_bar("assign", total=pending, unit="scans") as advance:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            sink.add(batch)
            advance(batch.num_rows)
            if sink.full:
                sink.flush()
        sink.flush()
    return sink.committed


def assigned_ids(workdir: Workdir, version: str) -> pa.Array:
    if not workdir.has_table(ASSIGNMENTS):
        return pa.array([], pa.string())
    return workdir.assignments(version, ["image_id"]).column("image_id").combine_chunks()


def _assigned(workdir: Workdir, version: str) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id, confidence) of every scan assigned under `version`."""
    rows = workdir.assignments(version, ["cluster_id", "confidence"])
    return rows.column("cluster_id").to_numpy(), rows.column("confidence").to_numpy()


def _copies(workdir: Workdir) -> int:
    """Files recorded as byte-identical copies of a scan: exported with their twin's cluster."""
    return workdir.table(DUPLICATES).count_rows()

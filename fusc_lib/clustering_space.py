"""The clustering space the stages after `fusc sites` share: embeddings centred per site,
and the neighbours mined in it (`load_neighbors`).

Loaded on the driver as one matrix: stages 2–3 train on all vectors together (1M × 1280
float32 is 5 GB; the neighbour search is the larger cost, see bench/neighbors.py). It is read
batch by batch into that one array and centred in place, so a stage holds one N × D copy: the
vectors as stored are read again only where asked (`ClusteringSpace.raw`, for evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusc_lib.sites import SiteCentering, load_site_model
from fusc_lib.store import Workdir
from schemas.tables import SITES

# Rows read at a time into the (N, D) array: 10 MiB at D = 1280. Lance keeps a few batches'
# buffers after the read, so larger batches leave more behind (8,192: +50 MiB at 50,000 rows).
EMBEDDING_BATCH_ROWS = 2_048


@dataclass
class ClusteringSpace:
    workdir: Workdir
    embedding: str
    image_ids: list[str]  # sorted, so every stage sees the same row order
    sites: list[str]
    centering: SiteCentering
    vectors: np.ndarray  # (N, D) centred per site, unit length: what stages 2-3 use

    @cached_property
    def raw(self) -> np.ndarray:
        """(N, D) embeddings as stored, rows in `image_ids` order, read when first asked.
        Raises ValueError when the table's scans changed since the space was loaded."""
        image_ids, raw = load_embeddings(self.workdir, self.embedding)
        if image_ids != self.image_ids:
            raise ValueError(f"the embeddings of {self.embedding!r} changed while in use")
        return raw


def latest_embedding(workdir: Workdir) -> str:
    """The embedding key written last, over every key's table (what a stage uses when none is
    named)."""
    newest = {key: pc.max(workdir.embeddings(key, ["embedded_at"])["embedded_at"]).as_py()
              for key in workdir.embedding_keys()}
    written = {key: at for key, at in newest.items() if at is not None}
    if not written:
        raise ValueError("no embeddings in this workdir: run `fusc embed` first")
    return max(written, key=written.get)


def load_embeddings(workdir: Workdir, embedding: str) -> tuple[list[str], np.ndarray]:
    """(image ids sorted, (N, D) float32 vectors) of one embedding key; D is that key's width.

    Two scans of one table version: the ids first (their sort order), then the vectors, each
    batch written to its sorted rows of the one (N, D) array, so memory is that array plus a
    batch. Raises ValueError when the key has no vectors."""
    table = workdir.embeddings_table(embedding).to_lance()  # one version for both scans
    ids = table.to_table(columns=["image_id"]).column("image_id").combine_chunks()
    if not len(ids):
        raise ValueError(f"no embeddings for {embedding!r}: run `fusc embed` for it first")
    order = pc.sort_indices(ids).to_numpy()
    sorted_row = np.empty(len(ids), dtype=np.int64)
    sorted_row[order] = np.arange(len(ids))
    vectors = np.empty((len(ids), table.schema.field("vector").type.list_size), np.float32)
    start = 0
    for batch in table.to_batches(columns=["image_id", "vector"], scan_in_order=True,
                                  batch_size=EMBEDDING_BATCH_ROWS):
        if not batch.column("image_id").equals(ids.slice(start, batch.num_rows)):
            raise ValueError(f"the embeddings of {embedding!r} changed while being read")
        block = np.asarray(batch.column("vector").flatten(), dtype=np.float32)
        vectors[sorted_row[start:start + batch.num_rows]] = block.reshape(batch.num_rows, -1)
        start += batch.num_rows
    return ids.take(order).to_pylist(), vectors


def load_sites(workdir: Workdir, image_ids: list[str]) -> list[str]:
    """The site of each scan, from the `sites` table."""
    if not workdir.has_table(SITES):
        raise ValueError("no sites in this workdir: run `fusc sites` first")
    by_id = workdir.site_of()
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} embedded scans have no site (new scans since "
                         "`fusc sites`): run it again")
    return [by_id[i] for i in image_ids]


def clustering_space(workdir: Workdir, embedding: str) -> ClusteringSpace:
    """The embeddings of `embedding`, centred per site (the `sites` table; a one-view style
    group on its nearest group's mean, `SiteCentering.fit`) in place: (N, D) float32 unit rows
    in sorted image-id order. Raises ValueError when a stage before is
    missing (no embeddings, no sites, scans embedded since `fusc sites`)."""
    image_ids, vectors = load_embeddings(workdir, embedding)
    sites = load_sites(workdir, image_ids)
    site_model = load_site_model(workdir)
    centering = SiteCentering.fit(vectors, sites, site_model.positions() if site_model else None)
    return ClusteringSpace(workdir, embedding, image_ids, sites, centering,
                           centering.centre_in_place(vectors, sites))


def load_neighbors(workdir: Workdir, embedding: str, image_ids: list[str]) -> np.ndarray:
    """(N, k) row numbers into `image_ids` of each scan's neighbours, from the `neighbors`
    table (`fusc neighbors` mines them in this space). Raises ValueError when the table's
    scans are not `image_ids` (new scans since)."""
    table = workdir.neighbors(embedding, ["image_id", "neighbor_ids"])
    ids = pa.array(image_ids, pa.string())
    rows = pc.index_in(table["image_id"], value_set=ids)  # each table row's row in image_ids
    neighbors = table["neighbor_ids"].combine_chunks()
    found = pc.index_in(neighbors.flatten(), value_set=ids)
    if (table.num_rows != len(image_ids) or rows.null_count or found.null_count
            or len(set(pc.list_value_length(neighbors).to_pylist())) > 1):
        raise ValueError(f"the neighbours of {embedding!r} are not those of its current "
                         "embeddings: run `fusc neighbors` again")
    result = np.empty((len(image_ids), len(found) // max(1, len(image_ids))), dtype=np.int64)
    result[rows.to_numpy()] = found.to_numpy().reshape(len(image_ids), -1)
    return result

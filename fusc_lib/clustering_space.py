"""The clustering space the stages after `fusc sites` share: embeddings centred per site,
and the neighbours mined in it (`load_neighbors`).

Loaded on the driver as one matrix: stages 2–3 train on all vectors together (1M × 1280
float32 is 5 GB; the neighbour search is the larger cost, see bench/neighbors.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fusc_lib.sites import SiteCentering
from fusc_lib.store import Workdir
from schemas.tables import SITES


@dataclass
class ClusteringSpace:
    image_ids: list[str]  # sorted, so every stage sees the same row order
    raw: np.ndarray  # (N, D) embeddings as stored
    sites: list[str]
    centering: SiteCentering
    vectors: np.ndarray  # (N, D) centred per site, unit length: what stages 2-3 use


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
    """(image ids sorted, (N, D) vectors) of one embedding key; D is that key's width."""
    table = workdir.embeddings(embedding, ["image_id", "vector"]).sort_by("image_id")
    if not table.num_rows:
        raise ValueError(f"no embeddings for {embedding!r}: run `fusc embed` for it first")
    vectors = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32)
    return table.column("image_id").to_pylist(), vectors.reshape(table.num_rows, -1)


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
    image_ids, raw = load_embeddings(workdir, embedding)
    sites = load_sites(workdir, image_ids)
    centering = SiteCentering.fit(raw, sites)
    return ClusteringSpace(image_ids, raw, sites, centering, centering.apply(raw, sites))


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
